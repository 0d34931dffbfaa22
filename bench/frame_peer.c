/*
 * A C peer on the bridge socket, for `npm run bench`, built on the module's
 * own encoder (native/vfsx_msg.c); no Samba needed.
 *
 *   frame_peer client SOCKET N [plain]
 *       hello, then N create reports that wait for their verdict (every
 *       other one strict, unless "plain"), each followed by its "done", as
 *       the module sends them: a blocking socket, poll() for the answer,
 *       and the "done" (sent without waiting) gathered and written with
 *       the next report in one send (native/vfsx_link.c: send_frame).
 *       Prints one JSON line of latencies in microseconds:
 *       {"plain":[..],"strict":[..]}
 *   frame_peer echo SOCKET
 *       a bare frame echo server: answers a hello with "hello:2:*" and every
 *       report that waits with "transparent:SEQ" (the floor: one Unix-socket
 *       round trip between two processes)
 *   frame_peer sink SOCKET HELLO-ANSWER
 *       a stand-in for `vfsx serve` that does as little as a service can
 *       (bench/module-bench.ts): answers the hello with HELLO-ANSWER (e.g.
 *       the policy's rules), every report that waits with "transparent",
 *       and acknowledges what it read after each read; records nothing
 */
#include "../native/vfsx_msg.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static struct vfsx_msg m;

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w <= 0) {
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Buffered frame reader: returns the payload length, 0 on EOF, -1 on error. */
struct frame_reader {
	bool patient;		/* wait for data without end (a server) */
	size_t len;
	uint8_t buf[1 << 17];
};

static int next_frame(struct frame_reader *fr, int fd, uint8_t *out, size_t max)
{
	for (;;) {
		if (fr->len >= 4) {
			uint32_t n = ((uint32_t)fr->buf[0] << 24) | ((uint32_t)fr->buf[1] << 16) |
				     ((uint32_t)fr->buf[2] << 8) | fr->buf[3];

			if (n > max || n > sizeof(fr->buf) - 4) {
				return -1;
			}
			if (fr->len >= 4 + n) {
				memcpy(out, fr->buf + 4, n);
				memmove(fr->buf, fr->buf + 4 + n, fr->len - 4 - n);
				fr->len -= 4 + n;
				return (int)n;
			}
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		if (poll(&pfd, 1, fr->patient ? -1 : 10000) <= 0) {
			return -1;
		}
		ssize_t r = read(fd, fr->buf + fr->len, sizeof(fr->buf) - fr->len);

		if (r == 0) {
			return 0;
		}
		if (r < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -1;
		}
		fr->len += (size_t)r;
	}
}

/* Sends one reply frame (printf-style payload). */
static int m_reply(int fd, const char *fmt, ...)
{
	uint8_t b[4 + 256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf((char *)b + 4, 256, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= 256) {
		return -1;
	}
	b[0] = 0;
	b[1] = 0;
	b[2] = (uint8_t)(n >> 8);
	b[3] = (uint8_t)n;
	return write_all(fd, b, 4 + (size_t)n);
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int client(const char *path, int n, bool with_strict)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static struct frame_reader r;
	static uint8_t out[2 * sizeof(m.buf)];	/* the gathered "done", then the next report */
	size_t gathered = 0;
	uint8_t reply[512];
	double *lat = calloc((size_t)n + 1, sizeof(double));
	int fd = socket(AF_UNIX, SOCK_STREAM, 0), i, len;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd < 0 || lat == NULL || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		perror("connect");
		return 1;
	}
	vfsx_msg_begin(&m, "root", "hello", "");
	vfsx_msg_arg_u64(&m, "proto", VFSX_PROTO_VERSION);
	vfsx_msg_arg_u64(&m, "pid", (uint64_t)getpid());
	vfsx_msg_arg_u64(&m, "start", 1);
	vfsx_msg_end(&m);
	if (write_all(fd, m.buf, m.len) != 0 || next_frame(&r, fd, reply, sizeof(reply)) <= 0) {
		fprintf(stderr, "no hello answer\n");
		return 1;
	}
	for (i = 1; i <= n; i++) {
		char name[64], want[40];
		double t0;

		snprintf(name, sizeof(name), "rtt/%d.txt", i);
		vfsx_msg_begin(&m, "bench", "create", "/srv/bench");
		vfsx_msg_arg_u64(&m, "seq", (uint64_t)i);
		vfsx_msg_arg_str(&m, "share", "bench");
		vfsx_msg_arg_str(&m, "path", name);
		vfsx_msg_arg_str(&m, "flags", "cx");
		vfsx_msg_arg_oct(&m, "mode", 0644);
		if (with_strict && i % 2 == 0) {
			vfsx_msg_arg_u64(&m, "strict", 1);
		}
		vfsx_msg_end(&m);
		snprintf(want, sizeof(want), "transparent:%d", i);
		memcpy(out + gathered, m.buf, m.len);
		t0 = now_us();
		if (write_all(fd, out, gathered + m.len) != 0) {
			return 1;
		}
		gathered = 0;
		for (;;) {
			len = next_frame(&r, fd, reply, sizeof(reply) - 1);
			if (len <= 0) {
				fprintf(stderr, "connection ended at %d\n", i);
				return 1;
			}
			reply[len] = '\0';
			if (strncmp((char *)reply, "ack:", 4) == 0) {
				continue;
			}
			if (strcmp((char *)reply, want) != 0) {
				fprintf(stderr, "unexpected answer %s to %s\n", reply, want);
				return 1;
			}
			break;
		}
		lat[i] = now_us() - t0;
		vfsx_msg_begin(&m, "bench", "done", "/srv/bench");
		vfsx_msg_arg_u64(&m, "seq", (uint64_t)i);
		vfsx_msg_arg_u64(&m, "err", 0);
		vfsx_msg_end(&m);
		memcpy(out, m.buf, m.len);
		gathered = m.len;
	}
	if (gathered > 0 && write_all(fd, out, gathered) != 0) {
		return 1;
	}
	for (int strict = 0; strict <= 1; strict++) {
		printf("%s\"%s\":[", strict ? "," : "{", strict ? "strict" : "plain");
		for (i = 1 + strict, len = 0; i <= n; i += 2) {
			printf("%s%.1f", len++ ? "," : "", lat[i]);
		}
		printf("]");
	}
	printf("}\n");
	close(fd);
	return 0;
}

struct peer {
	int fd;
	const char *hello;	/* the hello answer */
	bool ack;		/* acknowledge what was read after each read */
};

/* One connection: answers the hello and every report that waits; acks if asked to. */
static void *serve_connection(void *arg)
{
	struct peer p = *(struct peer *)arg;
	unsigned char *in = malloc(VFSX_FRAME_MAX + 1);
	struct frame_reader *r = calloc(1, sizeof(*r));
	unsigned long frames = 0;
	int len;

	free(arg);
	if (r != NULL) {
		r->patient = true;
	}
	while (in != NULL && r != NULL && (len = next_frame(r, p.fd, in, VFSX_FRAME_MAX)) > 0) {
		char *s = (char *)in, *seq;

		in[len] = '\0';
		frames++;
		seq = strstr(s, ":seq=");
		if (strstr(s, ":hello:") != NULL) {
			m_reply(p.fd, "%s", p.hello);
		} else if (seq != NULL && strstr(s, "async=1") == NULL &&
			   strstr(s, ":done:") == NULL) {
			m_reply(p.fd, "transparent:%llu", strtoull(seq + 5, NULL, 10));
		}
		if (p.ack && r->len == 0) {
			m_reply(p.fd, "ack:%lu", frames);
		}
	}
	free(in);
	free(r);
	close(p.fd);
	return NULL;
}

static int serve(const char *path, const char *hello, bool ack)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	unlink(path);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(lfd, 64) != 0 || chmod(path, 0600) != 0) {
		perror("listen");
		return 1;
	}
	printf("up\n");
	fflush(stdout);
	for (;;) {
		struct peer *p = malloc(sizeof(*p));
		pthread_t t;

		if (p == NULL) {
			return 1;
		}
		*p = (struct peer){ .fd = accept(lfd, NULL, NULL), .hello = hello, .ack = ack };
		if (p->fd < 0 || pthread_create(&t, NULL, serve_connection, p) != 0) {
			if (p->fd >= 0) {
				close(p->fd);
			}
			free(p);
			continue;
		}
		pthread_detach(t);
	}
}

int main(int argc, char **argv)
{
	if ((argc == 4 || argc == 5) && strcmp(argv[1], "client") == 0) {
		return client(argv[2], atoi(argv[3]), argc == 4 || strcmp(argv[4], "plain") != 0);
	}
	if (argc == 3 && strcmp(argv[1], "echo") == 0) {
		return serve(argv[2], "hello:2:*", false);
	}
	if (argc == 4 && strcmp(argv[1], "sink") == 0) {
		return serve(argv[2], argv[3], true);
	}
	fprintf(stderr, "usage: frame_peer client SOCKET N [plain] | echo SOCKET | sink SOCKET HELLO-ANSWER\n");
	return 2;
}
