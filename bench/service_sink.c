/*
 * A stand-in for `vfsx serve` that does as little as a service can, for
 * bench/module-bench.ts: it answers the hello with the given answer (e.g.
 * the README policy's rules, so the module decides itself), answers every
 * report that waits with "transparent:SEQ", and acknowledges everything it
 * read after each read. No journal, no Redis. What the vfsx share costs
 * against it is the module's own cost in smbd.
 *
 *   service_sink SOCKET HELLO-ANSWER
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define FRAME_MAX 65536

static const char *hello_answer;

static int send_frame(int fd, const char *s)
{
	size_t n = strlen(s);
	unsigned char b[300];

	if (n > sizeof(b) - 4) {
		return -1;
	}
	b[0] = (unsigned char)(n >> 24);
	b[1] = (unsigned char)(n >> 16);
	b[2] = (unsigned char)(n >> 8);
	b[3] = (unsigned char)n;
	memcpy(b + 4, s, n);
	return write(fd, b, n + 4) == (ssize_t)(n + 4) ? 0 : -1;
}

static void *connection(void *arg)
{
	int fd = (int)(long)arg;
	unsigned char *buf = malloc(4 * FRAME_MAX);
	char *frame = malloc(FRAME_MAX + 1);
	size_t len = 0;
	unsigned long frames = 0;

	while (buf != NULL && frame != NULL) {
		ssize_t r = read(fd, buf + len, 4 * FRAME_MAX - len);
		size_t off = 0;
		int got = 0;

		if (r <= 0) {
			break;
		}
		len += (size_t)r;
		while (len - off >= 4) {
			size_t n = ((size_t)buf[off] << 24) | ((size_t)buf[off + 1] << 16) |
				   ((size_t)buf[off + 2] << 8) | buf[off + 3];
			char *seq;

			if (n > FRAME_MAX) {
				goto out;
			}
			if (len - off < 4 + n) {
				break;
			}
			memcpy(frame, buf + off + 4, n);
			frame[n] = '\0';
			off += 4 + n;
			frames++;
			got = 1;
			if (strstr(frame, ":hello:") != NULL) {
				send_frame(fd, hello_answer);
				continue;
			}
			seq = strstr(frame, ":seq=");
			if (seq != NULL && strstr(frame, "async=1") == NULL &&
			    strstr(frame, ":done:") == NULL) {
				char v[64];

				snprintf(v, sizeof(v), "transparent:%llu",
					 strtoull(seq + 5, NULL, 10));
				send_frame(fd, v);
			}
		}
		memmove(buf, buf + off, len - off);
		len -= off;
		if (got) {
			char a[40];

			snprintf(a, sizeof(a), "ack:%lu", frames);
			send_frame(fd, a);
		}
	}
out:
	free(buf);
	free(frame);
	close(fd);
	return NULL;
}

int main(int argc, char **argv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd = socket(AF_UNIX, SOCK_STREAM, 0);

	if (argc != 3) {
		fprintf(stderr, "usage: service_sink SOCKET HELLO-ANSWER\n");
		return 2;
	}
	hello_answer = argv[2];
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[1]);
	unlink(argv[1]);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(lfd, 64) != 0 || chmod(argv[1], 0600) != 0) {
		perror("service_sink");
		return 1;
	}
	printf("up\n");
	fflush(stdout);
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		pthread_t t;

		if (fd < 0) {
			continue;
		}
		if (pthread_create(&t, NULL, connection, (void *)(long)fd) != 0) {
			close(fd);
			continue;
		}
		pthread_detach(t);
	}
}
