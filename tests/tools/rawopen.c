/*
 * What an Alpine (musl) program does when it opens a file: musl's open() and
 * fopen() are the open(2) syscall on x86_64, not openat(2).  Built statically
 * with musl-gcc by `scripts/setup.sh --test` into build/tools/rawopen.
 *
 *   rawopen open PATH     open(PATH, O_RDONLY) through musl
 *   rawopen write PATH    open(PATH, O_WRONLY|O_CREAT|O_TRUNC, 0644) through musl
 *   rawopen creat PATH    the creat(2) syscall itself (musl's creat() calls open(2))
 *
 * Prints the return value or -errno; always exits 0 (a refused open is still an event).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long fd;

	if (argc != 3) {
		fprintf(stderr, "usage: rawopen open|write|creat PATH\n");
		return 2;
	}
	if (!strcmp(argv[1], "open"))
		fd = open(argv[2], O_RDONLY);
	else if (!strcmp(argv[1], "write"))
		fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	else if (!strcmp(argv[1], "creat"))
		fd = syscall(SYS_creat, argv[2], 0644);
	else
		return 2;
	printf("%ld\n", fd < 0 ? -(long)errno : fd);
	return 0;
}
