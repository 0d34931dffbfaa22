/*
 * Verdict round trips as smbd's module makes them, for `npm run bench`:
 * the module's own encoder (native/vfsx_msg.c), a blocking Unix socket,
 * poll() for the answer. No Samba needed.
 *
 *   verdict_rtt client SOCKET N [plain]
 *                                 hello, then N create reports that wait
 *                                 for their verdict (every other one strict,
 *                                 unless "plain"),
 *                                 each followed by its "done" as the module
 *                                 sends it; prints one JSON line of latencies
 *                                 in microseconds: {"plain":[..],"strict":[..]}
 *   verdict_rtt echo SOCKET       a bare frame echo server: answers a hello
 *                                 with "hello:2:*" and every report with
 *                                 "transparent:SEQ" (the floor: one Unix
 *                                 socket round trip between two processes)
 */
#include "../native/vfsx_msg.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
static uint8_t rbuf[1 << 17];
static size_t rlen;

static int next_frame(int fd, uint8_t *out, size_t max)
{
	for (;;) {
		if (rlen >= 4) {
			uint32_t n = ((uint32_t)rbuf[0] << 24) | ((uint32_t)rbuf[1] << 16) |
				     ((uint32_t)rbuf[2] << 8) | rbuf[3];

			if (n > max || n > sizeof(rbuf) - 4) {
				return -1;
			}
			if (rlen >= 4 + n) {
				memcpy(out, rbuf + 4, n);
				memmove(rbuf, rbuf + 4 + n, rlen - 4 - n);
				rlen -= 4 + n;
				return (int)n;
			}
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		if (poll(&pfd, 1, 10000) <= 0) {
			return -1;
		}
		ssize_t r = read(fd, rbuf + rlen, sizeof(rbuf) - rlen);

		if (r == 0) {
			return 0;
		}
		if (r < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -1;
		}
		rlen += (size_t)r;
	}
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
	if (write_all(fd, m.buf, m.len) != 0 || next_frame(fd, reply, sizeof(reply)) <= 0) {
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
		t0 = now_us();
		if (write_all(fd, m.buf, m.len) != 0) {
			return 1;
		}
		for (;;) {
			len = next_frame(fd, reply, sizeof(reply) - 1);
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
		if (write_all(fd, m.buf, m.len) != 0) {
			return 1;
		}
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

static int echo(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	unlink(path);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 4) != 0) {
		perror("listen");
		return 1;
	}
	printf("up\n");
	fflush(stdout);
	for (;;) {
		static uint8_t in[VFSX_FRAME_MAX];
		int fd = accept(lfd, NULL, NULL), len;

		if (fd < 0) {
			continue;
		}
		rlen = 0;
		while ((len = next_frame(fd, in, sizeof(in) - 1)) > 0) {
			char *s = (char *)in, *seq;

			in[len] = '\0';
			seq = strstr(s, ":seq=");
			if (strstr(s, ":hello:") != NULL) {
				vfsx_msg_begin(&m, "", "", "");
				m.len = 4 + (size_t)snprintf((char *)m.buf + 4, 64, "hello:2:*");
			} else if (strstr(s, ":done:") != NULL || seq == NULL) {
				continue;
			} else {
				m.len = 4 + (size_t)snprintf((char *)m.buf + 4, 64, "transparent:%llu",
							     strtoull(seq + 5, NULL, 10));
			}
			vfsx_msg_end(&m);
			if (write_all(fd, m.buf, m.len) != 0) {
				break;
			}
		}
		close(fd);
	}
}

int main(int argc, char **argv)
{
	if ((argc == 4 || argc == 5) && strcmp(argv[1], "client") == 0) {
		return client(argv[2], atoi(argv[3]), argc == 4 || strcmp(argv[4], "plain") != 0);
	}
	if (argc == 3 && strcmp(argv[1], "echo") == 0) {
		return echo(argv[2]);
	}
	fprintf(stderr, "usage: verdict_rtt client SOCKET N | echo SOCKET\n");
	return 2;
}
