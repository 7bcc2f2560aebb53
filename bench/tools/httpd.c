/*
 * The churn benchmark's server: accept, read one request, answer a fixed
 * 200 with "Connection: close", close.  C and single-threaded on purpose:
 * a slow server would hide the per-connection cost of the TCP probes behind
 * its own.  Usage: httpd ADDR PORT (prints "listening" when ready).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESPONSE[] =
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s ADDR PORT\n", argv[0]);
		return 2;
	}
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };

	if (s < 0 || inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
		perror("httpd: socket/address");
		return 1;
	}
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 4096)) {
		perror("httpd: bind/listen");
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	char buf[4096];
	for (;;) {
		int c = accept(s, NULL, NULL);

		if (c < 0)
			continue;
		/* wrk sends the whole request in one segment; one read is enough. */
		if (read(c, buf, sizeof(buf)) > 0)
			(void)!write(c, RESPONSE, sizeof(RESPONSE) - 1);
		close(c);
	}
}
