/*
 * The TLS handshake benchmark's server and client (OpenSSL, linked
 * dynamically: the tls probe's uprobes sit in the libssl.so.3 that both map).
 * Every connection is one full handshake: a new TCP connection and a new SSL
 * object on each side; the server issues no session tickets and keeps no
 * session cache, the client offers no session, and every handshake's
 * SSL_session_reused() is checked.  The client verifies the server's
 * certificate and name, as a real client does.  C on purpose: a slow client
 * or server would hide the probe's cost per handshake behind its own.
 *
 *   tlsbench serve ADDR PORT CERT KEY WORKERS
 *       WORKERS processes accept on one socket: SSL_accept, then close_notify
 *       (SSL_shutdown), SSL_free, close.  Prints "listening" when ready.
 *   tlsbench connect ADDR PORT CAFILE NAME SECONDS CLIENTS
 *       CLIENTS processes, each one connection at a time until SECONDS have
 *       passed: connect, SSL_connect, SSL_read until the server's
 *       close_notify (so the server's handshake is over too), SSL_free,
 *       close.  Prints one line:
 *       "handshakes N seconds S reused R failed F protocol P cipher C".
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct tally {
	long handshakes, reused, failed;
	double end;
	char protocol[32], cipher[64];
};

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "tlsbench: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static struct sockaddr_in address(const char *addr, const char *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(port)) };

	if (inet_pton(AF_INET, addr, &a.sin_addr) != 1)
		die("bad address");
	return a;
}

static void serve_loop(int s, SSL_CTX *ctx)
{
	for (;;) {
		int c = accept(s, NULL, NULL);

		if (c < 0)
			continue;
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
		SSL *ssl = SSL_new(ctx);

		if (!ssl)
			die("SSL_new");
		SSL_set_fd(ssl, c);
		if (SSL_accept(ssl) == 1)
			SSL_shutdown(ssl);	/* close_notify: the client waits for it */
		else
			ERR_clear_error();
		SSL_free(ssl);
		close(c);
	}
}

static void one_client(struct sockaddr_in a, SSL_CTX *ctx, const char *name, double deadline, struct tally *t)
{
	char buf[64];

	while (now() < deadline) {
		int c = socket(AF_INET, SOCK_STREAM, 0);

		if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
			die("connect");
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
		SSL *ssl = SSL_new(ctx);

		if (!ssl)
			die("SSL_new");
		SSL_set_fd(ssl, c);
		SSL_set_tlsext_host_name(ssl, name);
		SSL_set1_host(ssl, name);
		if (SSL_connect(ssl) == 1) {
			/* 0 and the server's close_notify received.  SSL_get_error() is
			 * not called: it is no part of a handshake, and the tls probe
			 * hooks it too. */
			int r = SSL_read(ssl, buf, sizeof(buf));

			if (r == 0 && (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN)) {
				t->handshakes++;
				t->reused += SSL_session_reused(ssl);
				if (!t->protocol[0]) {
					snprintf(t->protocol, sizeof(t->protocol), "%s", SSL_get_version(ssl));
					snprintf(t->cipher, sizeof(t->cipher), "%s", SSL_get_cipher_name(ssl));
				}
			} else {
				t->failed++;
			}
		} else {
			t->failed++;
		}
		ERR_clear_error();
		SSL_free(ssl);
		close(c);
	}
	t->end = now();
}

static int connect_main(char **argv)
{
	struct sockaddr_in a = address(argv[0], argv[1]);
	double seconds = atof(argv[4]);
	int clients = atoi(argv[5]);
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx || SSL_CTX_load_verify_locations(ctx, argv[2], NULL) != 1)
		die("CA file");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	signal(SIGPIPE, SIG_IGN);

	int fds[2];

	if (pipe(fds))
		die("pipe");
	double start = now(), deadline = start + seconds;

	for (int i = 0; i < clients; i++) {
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0) {
			struct tally t = { 0 };

			close(fds[0]);
			one_client(a, ctx, argv[3], deadline, &t);
			if (write(fds[1], &t, sizeof(t)) != sizeof(t))
				_exit(1);
			_exit(0);
		}
	}
	close(fds[1]);

	struct tally sum = { 0 }, t;
	int got = 0;

	while (read(fds[0], &t, sizeof(t)) == sizeof(t)) {
		got++;
		sum.handshakes += t.handshakes;
		sum.reused += t.reused;
		sum.failed += t.failed;
		if (t.end > sum.end)
			sum.end = t.end;
		if (!sum.protocol[0]) {
			memcpy(sum.protocol, t.protocol, sizeof(t.protocol));
			memcpy(sum.cipher, t.cipher, sizeof(t.cipher));
		}
	}
	while (wait(NULL) > 0)
		;
	if (got != clients)
		die("a client process did not report");
	printf("handshakes %ld seconds %.6f reused %ld failed %ld protocol %s cipher %s\n", sum.handshakes,
	       sum.end - start, sum.reused, sum.failed, sum.protocol[0] ? sum.protocol : "-",
	       sum.cipher[0] ? sum.cipher : "-");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 7 && !strcmp(argv[1], "serve")) {
		/* The parent prints "listening" once the socket listens; its workers forked already. */
		int s;
		SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

		if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[4]) != 1 ||
		    SSL_CTX_use_PrivateKey_file(ctx, argv[5], SSL_FILETYPE_PEM) != 1)
			die("certificate or key");
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
		SSL_CTX_set_num_tickets(ctx, 0);

		struct sockaddr_in a = address(argv[2], argv[3]);
		int one = 1, workers = atoi(argv[6]);

		s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0)
			die("socket");
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 4096))
			die("bind/listen");
		signal(SIGPIPE, SIG_IGN);
		for (int i = 1; i < workers; i++) {
			pid_t pid = fork();

			if (pid < 0)
				die("fork");
			if (pid == 0) {
				/* Gone with the parent, which is the process the bench kills. */
				prctl(PR_SET_PDEATHSIG, SIGKILL);
				if (getppid() == 1)
					_exit(0);
				serve_loop(s, ctx);
				_exit(0);
			}
		}
		printf("listening\n");
		fflush(stdout);
		serve_loop(s, ctx);
	}
	if (argc == 8 && !strcmp(argv[1], "connect"))
		return connect_main(argv + 2);
	fprintf(stderr, "usage: %s serve ADDR PORT CERT KEY WORKERS\n"
			"       %s connect ADDR PORT CAFILE NAME SECONDS CLIENTS\n", argv[0], argv[0]);
	return 2;
}
