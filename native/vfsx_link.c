/*
 * vfsx link: see vfsx_link.h and docs/protocol.md.
 *
 * States: DOWN (no socket; a retry timer is pending), HELLO (connected,
 * hello sent, answer not yet seen), UP. Reconnects run from a tevent timer
 * in smbd's event loop, never on the path of an operation, so an operation
 * costs at most one bounded wait while the service is unreachable.
 */
#include "includes.h"
#include "system/filesys.h"
#include "smbd/smbd.h"
#include "vfsx_link.h"

#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>

#define VFSX_MODULE_VERSION "0.1.0"
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 5000
#define REPLY_MAX 256
/*
 * Spooled changes are made durable (fdatasync) this long after the first
 * write that is not yet durable: one flush per burst, not one per change.
 * A power failure loses at most this window of spooled changes.
 */
#define SPOOL_SYNC_MS 5

enum link_state { LINK_DOWN, LINK_HELLO, LINK_UP };
static const char *const state_names[] = { "down", "hello", "up" };

struct vfsx_link {
	bool setup;
	enum link_state state;
	int fd;
	struct tevent_context *ev;
	struct tevent_fd *fde;
	struct tevent_timer *timer;
	char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *spool_dir;
	int hello_timeout_ms;
	unsigned backoff_ms;
	uint64_t seq;
	pid_t pid;
	unsigned long long start;
	int spool_fd;
	unsigned spool_gen;
	bool spool_dirty;	/* written since the last fdatasync */
	struct tevent_timer *spool_timer;
	uint32_t verdict_mask;	/* ops that must wait for a verdict */
	bool folds;		/* the service takes folded reports (hello 3) */
	bool meta;		/* ... and metadata on content reports (hello 4) */
	uint64_t sent;		/* frames sent on this connection (hello = 1) */
	size_t rlen;
	uint8_t rbuf[4096];
};

/*
 * Frames sent without waiting (async reports, outcomes) stay here until the
 * service acknowledges them as durable ("ack:N", or any verdict after
 * them). If the link fails first, they go to the spool: nothing is lost.
 */
#define RING_MAX 512
#define RING_BYTES (1u << 20)
struct unacked {
	uint64_t idx;
	uint32_t len;
	uint8_t *data;
};
static struct unacked ring[RING_MAX];
static unsigned ring_head, ring_n;
static size_t ring_bytes;

/*
 * Frames sent without waiting are gathered here and go out in one send
 * gather_ms after the first of them (a tevent timer; with 0, at the end of
 * the current turn of smbd's event loop, a tevent immediate), or with the
 * next frame that waits for a verdict, or when obuf is full. Every send
 * wakes the service, and a wake-up costs the sender as much as the work it
 * reports: one per few milliseconds instead of one per SMB request. Each
 * frame is already in the ring, so a failure loses nothing.
 */
#define OBUF_MAX (64u << 10)
static uint8_t obuf[OBUF_MAX];
static size_t olen;
static struct tevent_immediate *flush_im;
static struct tevent_timer *flush_te;
static bool flush_due;
static int gather_ms;

/*
 * Folding: an async report of an operation that has not finished is held
 * here (not yet in obuf or the ring) until its outcome, and then goes out
 * as ONE frame that carries err= (a folded report, when the service said
 * it takes them), instead of the report and a "done" frame: half the
 * frames, records and journal entries per change. Anything else sent
 * meanwhile (a nested report, a verdict request, a flush, a disconnect)
 * first releases the held report as it is, so frames keep their order;
 * its "done" then follows as before.
 */
static struct vfsx_msg held;
static uint64_t held_seq;	/* 0: nothing held */
/*
 * Amending: a folded report of a mkdir or rename stays held (done) until
 * anything else is sent, because smbd sets the DOS attributes of the
 * directory it made, or of the file it renamed, right after: those join
 * the report as attrs= (vfsx_link_amend; the service said hello:4) instead
 * of a setdosattr report of its own. held_key: the name they must be set on.
 */
static bool held_done;
static char held_key[1024];

static struct vfsx_link L = {
	.fd = -1, .spool_fd = -1, .verdict_mask = (1u << VFSX_N_OPS) - 1
};
static struct vfsx_msg hello_msg;
static void release_held(void);
static void flush_schedule(void);
/* The policy's rules when simple enough to apply here (from the hello answer). */
static struct vfsx_rules rules;
static bool have_rules;

static void link_schedule(unsigned delay_ms);
static void link_connect(void);

static void set_state(enum link_state s, const char *why)
{
	if (L.state != s) {
		DBG_NOTICE("vfsx: link %s -> %s (%s)\n", state_names[L.state],
			   state_names[s], why);
	}
	L.state = s;
}

static unsigned long long self_start_time(void)
{
	char buf[1024];
	char *p = NULL;
	unsigned long long v = 0;
	ssize_t n;
	int fd, i;

	fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		return 0;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		return 0;
	}
	buf[n] = '\0';
	p = strrchr(buf, ')');
	/* field 22 (starttime); p points at the end of field 2 */
	for (i = 2; p != NULL && i < 22; i++) {
		p = strchr(p + 1, ' ');
	}
	if (p != NULL) {
		v = strtoull(p + 1, NULL, 10);
	}
	return v;
}

static void build_hello(void)
{
	vfsx_msg_begin(&hello_msg, "root", "hello", "");
	vfsx_msg_arg_u64(&hello_msg, "proto", VFSX_PROTO_VERSION);
	vfsx_msg_arg_u64(&hello_msg, "pid", (uint64_t)L.pid);
	vfsx_msg_arg_u64(&hello_msg, "start", L.start);
	vfsx_msg_arg_str(&hello_msg, "module", VFSX_MODULE_VERSION);
	vfsx_msg_arg_u64(&hello_msg, "fold", 1);
	vfsx_msg_arg_u64(&hello_msg, "meta", 1);
	vfsx_msg_end(&hello_msg);
}

static int write_full(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w <= 0) {
			return -errno;
		}
		p += w;
		n -= w;
	}
	return 0;
}

static int spool_open(void)
{
	char tmp[PATH_MAX], final[PATH_MAX];
	int fd, dirfd, err = 0;

	snprintf(tmp, sizeof(tmp), "%s/vfsx-%d-%llu-%u.tmp", L.spool_dir,
		 (int)L.pid, L.start, L.spool_gen);
	snprintf(final, sizeof(final), "%s/vfsx-%d-%llu-%u.spool",
		 L.spool_dir, (int)L.pid, L.start, L.spool_gen);
	become_root();
	(void)mkdir(L.spool_dir, 0700);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		err = errno;
	} else if (flock(fd, LOCK_EX | LOCK_NB) != 0 ||
		   rename(tmp, final) != 0) {
		err = errno;
		unlink(tmp);
		close(fd);
		fd = -1;
	}
	unbecome_root();
	if (fd < 0) {
		DBG_ERR("vfsx: cannot open spool file path=%s errno=%d\n",
			final, err);
		return -err;
	}
	/* The file's name must survive a power failure too. */
	become_root();
	dirfd = open(L.spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd >= 0) {
		(void)fsync(dirfd);
		close(dirfd);
	}
	unbecome_root();
	DBG_WARNING("vfsx: spooling changes path=%s\n", final);
	L.spool_fd = fd;
	L.spool_gen++;
	return write_full(fd, hello_msg.buf, hello_msg.len);
}

static void spool_sync(void)
{
	TALLOC_FREE(L.spool_timer);
	if (L.spool_fd < 0 || !L.spool_dirty) {
		return;
	}
	L.spool_dirty = false;
	if (fdatasync(L.spool_fd) != 0) {
		DBG_ERR("vfsx: spool fdatasync failed errno=%d\n", errno);
	}
}

static void spool_sync_timer(struct tevent_context *ev,
			     struct tevent_timer *te, struct timeval now,
			     void *private_data)
{
	L.spool_timer = NULL;
	spool_sync();
}

/* First write of a burst: flush it (and what follows) SPOOL_SYNC_MS later. */
static void spool_mark_dirty(void)
{
	if (L.spool_dirty) {
		return;
	}
	L.spool_dirty = true;
	if (L.ev == NULL) {
		spool_sync();
		return;
	}
	L.spool_timer = tevent_add_timer(L.ev, NULL,
					 timeval_current_ofs_msec(SPOOL_SYNC_MS),
					 spool_sync_timer, NULL);
	if (L.spool_timer == NULL) {
		spool_sync();
	}
}

/* The service is back: hand it the spool (durable) by releasing our lock. */
static void spool_close(void)
{
	if (L.spool_fd >= 0) {
		spool_sync();
		close(L.spool_fd);
		L.spool_fd = -1;
	}
}

void vfsx_link_spool(struct vfsx_msg *m)
{
	int rc;

	if (L.spool_fd < 0 && spool_open() < 0) {
		DBG_ERR("vfsx: change not recorded (no spool)\n");
		return;
	}
	rc = write_full(L.spool_fd, m->buf, m->len);
	if (rc < 0) {
		DBG_ERR("vfsx: change not recorded (spool write) errno=%d\n",
			-rc);
		return;
	}
	spool_mark_dirty();
}

static void ring_prune(uint64_t upto)
{
	while (ring_n > 0 && ring[ring_head].idx <= upto) {
		ring_bytes -= ring[ring_head].len;
		free(ring[ring_head].data);
		ring[ring_head].data = NULL;
		ring_head = (ring_head + 1) % RING_MAX;
		ring_n--;
	}
}

/* The link failed: whatever was not acknowledged goes to the spool. */
static void ring_spool(void)
{
	struct vfsx_msg *m = NULL;

	while (ring_n > 0) {
		struct unacked *u = &ring[ring_head];

		if (m == NULL) {
			m = talloc_zero(NULL, struct vfsx_msg);
		}
		if (m != NULL && u->len <= sizeof(m->buf)) {
			memcpy(m->buf, u->data, u->len);
			m->len = u->len;
			vfsx_link_spool(m);
		} else {
			DBG_ERR("vfsx: change not recorded (no memory)\n");
		}
		ring_prune(u->idx);
	}
	TALLOC_FREE(m);
}

/* Takes back the newest frame (the service could not record it). */
static void ring_drop_newest(uint64_t idx)
{
	struct unacked *u;

	if (ring_n == 0) {
		return;
	}
	u = &ring[(ring_head + ring_n - 1) % RING_MAX];
	if (u->idx != idx) {
		return;
	}
	ring_bytes -= u->len;
	free(u->data);
	u->data = NULL;
	ring_n--;
}

static int ring_push(uint64_t idx, const struct vfsx_msg *m)
{
	struct unacked *u = &ring[(ring_head + ring_n) % RING_MAX];

	u->data = malloc(m->len);
	if (u->data == NULL) {
		return -ENOMEM;
	}
	memcpy(u->data, m->buf, m->len);
	u->len = m->len;
	u->idx = idx;
	ring_n++;
	ring_bytes += m->len;
	return 0;
}

static void link_close(void)
{
	olen = 0; /* every gathered frame is in the ring */
	TALLOC_FREE(L.fde);
	if (L.fd >= 0) {
		close(L.fd);
		L.fd = -1;
	}
	L.rlen = 0;
}

static void link_fail(const char *why, int err)
{
	if (L.state != LINK_DOWN) {
		DBG_WARNING("vfsx: link to %s lost: %s errno=%d\n",
			    L.socket_path, why, err);
	}
	link_close();
	ring_spool();
	set_state(LINK_DOWN, why);
	link_schedule(L.backoff_ms);
	L.backoff_ms = MIN(L.backoff_ms * 2, BACKOFF_MAX_MS);
}

/*
 * Takes one whole reply frame out of rbuf. Returns 1 and the reply, 0 when
 * more bytes are needed, or -EPROTO for a frame that is not a reply.
 */
static int take_reply(char *kind, uint64_t *seq, int *err, uint32_t *mask)
{
	const uint8_t *ops = NULL;
	size_t ops_len = 0;
	uint32_t n;
	int rc;

	if (L.rlen < 4) {
		return 0;
	}
	n = ((uint32_t)L.rbuf[0] << 24) | ((uint32_t)L.rbuf[1] << 16) |
	    ((uint32_t)L.rbuf[2] << 8) | L.rbuf[3];
	if (n == 0 || n > REPLY_MAX) {
		return -EPROTO;
	}
	if (L.rlen < 4 + n) {
		return 0;
	}
	rc = vfsx_reply_parse(L.rbuf + 4, n, kind, seq, err, &ops, &ops_len);
	if (rc == 0 && *kind == 'H') {
		*mask = vfsx_ops_mask(ops, ops_len);
		L.folds = *seq >= VFSX_PROTO_FOLDS;
		L.meta = *seq >= VFSX_PROTO_META;
		have_rules = vfsx_rules_parse(ops, ops_len, &rules) == 0;
	}
	memmove(L.rbuf, L.rbuf + 4 + n, L.rlen - 4 - n);
	L.rlen -= 4 + n;
	return rc < 0 ? rc : 1;
}

static void got_hello(uint32_t mask)
{
	L.verdict_mask = mask;
	set_state(LINK_UP, "hello answered");
	L.backoff_ms = BACKOFF_MIN_MS;
	TALLOC_FREE(L.timer);
	spool_close();
}

/* Reads what is there without blocking. Returns 0, or -errno on EOF/error. */
static int read_some(void)
{
	ssize_t n;

	if (L.rlen == sizeof(L.rbuf)) {
		return -EPROTO;
	}
	n = recv(L.fd, L.rbuf + L.rlen, sizeof(L.rbuf) - L.rlen, MSG_DONTWAIT);
	if (n == 0) {
		return -ECONNRESET;
	}
	if (n < 0) {
		return (errno == EAGAIN || errno == EINTR) ? 0 : -errno;
	}
	L.rlen += n;
	return 0;
}

static long ms_until(const struct timespec *deadline)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (deadline->tv_sec - now.tv_sec) * 1000 +
	       (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

enum wait_for { WAIT_HELLO, WAIT_VERDICT, WAIT_ACK };

/*
 * Reads replies until the wanted one: the hello answer, the verdict on
 * seq `want` (sent as frame want_idx), or acknowledgement of frame `want`.
 * Stale verdicts (for operations that already timed out) are skipped.
 */
static int link_wait(enum wait_for what, uint64_t want, uint64_t want_idx,
		     int timeout_ms, int *verdict_err)
{
	struct timespec deadline;
	struct pollfd pfd = { .fd = L.fd, .events = POLLIN };

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	for (;;) {
		char kind = 0;
		uint64_t seq = 0;
		uint32_t mask = 0;
		int err = 0, rc;
		long left;

		if (what == WAIT_ACK &&
		    (ring_n == 0 || ring[ring_head].idx > want)) {
			return 0;
		}
		rc = take_reply(&kind, &seq, &err, &mask);
		if (rc < 0) {
			return rc;
		}
		if (rc == 1) {
			if (kind == 'H') {
				got_hello(mask);
				if (what == WAIT_HELLO) {
					return 0;
				}
			} else if (kind == 'A') {
				ring_prune(seq);
			} else if (what == WAIT_VERDICT && seq == want) {
				if (kind == 'U') {
					/* up, but cannot record it now */
					return -EAGAIN;
				}
				*verdict_err = kind == 'F' ? err : 0;
				/*
				 * A verdict is not an acknowledgement (protocol
				 * 2): the frame stays in the ring until "ack".
				 */
				spool_close();
				return 0;
			}
			continue;
		}
		left = ms_until(&deadline);
		if (left <= 0) {
			return -ETIMEDOUT;
		}
		rc = poll(&pfd, 1, (int)left);
		if (rc < 0 && errno != EINTR) {
			return -errno;
		}
		if (rc > 0) {
			rc = read_some();
			if (rc < 0) {
				return rc;
			}
		}
	}
}

/*
 * Sends whole frames. A full socket buffer is waited out (bounded): a
 * partial frame cannot be taken back, so a send that cannot finish ends
 * the connection (the ring spools what it holds).
 */
static int send_all(const uint8_t *p, size_t len)
{
	struct pollfd pfd = { .fd = L.fd, .events = POLLOUT };

	while (len > 0) {
		ssize_t n = send(L.fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0) {
			p += n;
			len -= n;
			continue;
		}
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && errno == EAGAIN &&
		    poll(&pfd, 1, L.hello_timeout_ms) > 0) {
			continue;
		}
		return n < 0 ? -errno : -EPIPE;
	}
	return 0;
}

/* Sends what is gathered in obuf. */
static int obuf_flush(void)
{
	int rc;

	if (olen == 0) {
		return 0;
	}
	rc = send_all(obuf, olen);
	olen = 0;
	return rc;
}

/* Sends a frame now, after whatever is gathered (one send when it fits). */
static int send_frame(struct vfsx_msg *m)
{
	int rc;

	if (olen + m->len <= OBUF_MAX) {
		memcpy(obuf + olen, m->buf, m->len);
		olen += m->len;
		L.sent++;
		return obuf_flush();
	}
	rc = obuf_flush();
	if (rc == 0) {
		rc = send_all(m->buf, m->len);
	}
	if (rc == 0) {
		L.sent++;
	}
	return rc;
}

static void link_readable(struct tevent_context *ev, struct tevent_fd *fde,
			  uint16_t flags, void *private_data)
{
	char kind;
	uint64_t seq;
	uint32_t mask = 0;
	int err, rc;

	rc = read_some();
	while (rc == 0 && (rc = take_reply(&kind, &seq, &err, &mask)) == 1) {
		if (kind == 'H') {
			got_hello(mask);
		} else if (kind == 'A') {
			ring_prune(seq);
		}
		rc = 0;
		if (L.fd < 0) {
			return;
		}
	}
	if (rc < 0) {
		link_fail(rc == -ECONNRESET ? "closed by service" : "read",
			  -rc);
	}
}

static void link_timer(struct tevent_context *ev, struct tevent_timer *te,
		       struct timeval now, void *private_data)
{
	L.timer = NULL;
	if (L.state == LINK_HELLO) {
		link_fail("hello not answered", ETIMEDOUT);
		return;
	}
	if (L.state == LINK_DOWN) {
		link_connect();
	}
}

static void link_schedule(unsigned delay_ms)
{
	unsigned jitter = delay_ms / 2;

	TALLOC_FREE(L.timer);
	if (L.ev == NULL) {
		return;
	}
	if (jitter > 0) {
		delay_ms = delay_ms - jitter + (unsigned)(random() % jitter);
	}
	L.timer = tevent_add_timer(L.ev, NULL,
				   timeval_current_ofs_msec(delay_ms),
				   link_timer, NULL);
}

static void link_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, rc, err = 0;

	link_close();
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", L.socket_path);
	/* SO_PEERCRED records who connects: always connect as root. */
	become_root();
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	rc = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (rc != 0) {
		err = errno;
	}
	unbecome_root();
	if (rc != 0) {
		if (fd >= 0) {
			close(fd);
		}
		link_fail("connect", err);
		return;
	}
	L.fd = fd;
	L.sent = 0;
	if (send_frame(&hello_msg) != 0) {
		link_fail("hello send", errno);
		return;
	}
	set_state(LINK_HELLO, "connected");
	if (L.ev != NULL) {
		L.fde = tevent_add_fd(L.ev, NULL, fd, TEVENT_FD_READ,
				      link_readable, NULL);
		TALLOC_FREE(L.timer);
		L.timer = tevent_add_timer(
			L.ev, NULL, timeval_current_ofs_msec(L.hello_timeout_ms),
			link_timer, NULL);
	}
}

void vfsx_link_setup(struct tevent_context *ev, const char *socket_path,
		     const char *spool_dir, int hello_timeout_ms,
		     int gather_ms_)
{
	if (L.setup) {
		if (strcmp(socket_path, L.socket_path) != 0) {
			DBG_WARNING("vfsx: one link per smbd process; "
				    "ignoring socket=%s, using %s\n",
				    socket_path, L.socket_path);
		}
		return;
	}
	if (strlen(socket_path) >= sizeof(L.socket_path)) {
		DBG_ERR("vfsx: socket path too long: %s\n", socket_path);
	}
	L.setup = true;
	L.ev = ev;
	snprintf(L.socket_path, sizeof(L.socket_path), "%s", socket_path);
	L.spool_dir = talloc_strdup(NULL, spool_dir);
	L.hello_timeout_ms = hello_timeout_ms;
	gather_ms = MAX(0, MIN(gather_ms_, 100));
	L.backoff_ms = BACKOFF_MIN_MS;
	L.pid = getpid();
	L.start = self_start_time();
	build_hello();
	link_connect();
}

/* End of the gathering of frames: send them. */
static void flush_gathered(void)
{
	int rc;

	flush_due = false;
	release_held();
	if (L.fd < 0 || L.state == LINK_DOWN) {
		return;
	}
	rc = obuf_flush();
	if (rc < 0) {
		link_fail("flush", -rc);
	}
}

static void flush_handler(struct tevent_context *ev,
			  struct tevent_immediate *im, void *private_data)
{
	flush_gathered();
}

static void flush_timer(struct tevent_context *ev, struct tevent_timer *te,
			struct timeval now, void *private_data)
{
	flush_te = NULL;
	flush_gathered();
}

/* A frame was gathered: make sure a send follows. */
static void flush_schedule(void)
{
	if (flush_due) {
		return;
	}
	flush_due = true;
	if (gather_ms > 0) {
		flush_te = tevent_add_timer(L.ev, NULL,
					    timeval_current_ofs_msec(gather_ms),
					    flush_timer, NULL);
		if (flush_te != NULL) {
			return;
		}
	}
	tevent_schedule_immediate(flush_im, L.ev, flush_handler, NULL);
}

uint64_t vfsx_link_next_seq(void)
{
	return ++L.seq;
}

/*
 * Room in the ring for one more frame of len bytes: when the service is
 * behind, waits (bounded) for it to catch up. Fails the link if it does not.
 */
static int ring_make_room(size_t len)
{
	int verdict = 0, rc;

	if (ring_n < RING_MAX && ring_bytes + len <= RING_BYTES) {
		return 0;
	}
	/* The service can only acknowledge what it has. */
	rc = obuf_flush();
	if (rc == 0) {
		rc = link_wait(WAIT_ACK, ring[ring_head].idx, 0,
			       L.hello_timeout_ms, &verdict);
	}
	if (rc < 0) {
		link_fail("acks not coming", -rc);
	}
	return rc;
}

/*
 * The frame stays in the ring, like a posted one, until the service
 * acknowledges it as durable: the verdict comes from the policy at once
 * and durability follows (protocol 2). Whatever happens, the frame is
 * recorded: acknowledged, or spooled (here or with the ring).
 */
int vfsx_link_ask(struct vfsx_msg *m, uint64_t seq, int timeout_ms,
		  int *verdict_err)
{
	bool kept = false;
	int rc;

	release_held();
	if (L.state == LINK_DOWN) {
		vfsx_link_spool(m);
		return -ENOTCONN;
	}
	if (L.state == LINK_HELLO) {
		rc = link_wait(WAIT_HELLO, 0, 0, timeout_ms, verdict_err);
		if (rc < 0) {
			link_fail("hello", -rc);
			vfsx_link_spool(m);
			return rc;
		}
	}
	rc = ring_make_room(m->len);
	if (rc < 0) {
		vfsx_link_spool(m);
		return rc;
	}
	rc = send_frame(m);
	if (rc == 0) {
		kept = ring_push(L.sent, m) == 0;
		if (!kept) {
			/* no memory for a copy: a duplicate is harmless */
			vfsx_link_spool(m);
			kept = true;
		}
		rc = link_wait(WAIT_VERDICT, seq, L.sent, timeout_ms,
			       verdict_err);
		if (rc == -EAGAIN) {
			/* up, but cannot record it now: spool it ourselves */
			ring_drop_newest(L.sent);
			vfsx_link_spool(m);
			return rc;
		}
	}
	if (rc < 0) {
		link_fail(rc == -ETIMEDOUT ? "verdict timed out" : "ask", -rc);
		if (!kept) {
			vfsx_link_spool(m);
		}
	}
	return rc;
}

void vfsx_link_drain(void)
{
	int verdict = 0, rc;

	release_held();
	if (L.state == LINK_UP && obuf_flush() != 0) {
		link_fail("flush at disconnect", EPIPE);
	}
	if (ring_n == 0) {
		return;
	}
	if (L.state == LINK_UP) {
		rc = link_wait(WAIT_ACK, ring[(ring_head + ring_n - 1) % RING_MAX].idx,
			       0, L.hello_timeout_ms, &verdict);
		if (rc == 0) {
			return;
		}
		link_fail("acks not coming at disconnect", -rc);
	}
	ring_spool();
}

const struct vfsx_rules *vfsx_link_rules(void)
{
	return L.state == LINK_UP && have_rules ? &rules : NULL;
}

bool vfsx_link_up(void)
{
	return L.state == LINK_UP;
}

/*
 * The event loop may not have run since the service went away (an SMB
 * request and the socket's EOF become ready together): look now, without
 * waiting, so a share that fails when the service is down does not let an
 * operation through on a link that is already gone. One read may take
 * replies and leave the EOF behind them for the next.
 */
bool vfsx_link_alive(void)
{
	struct pollfd pfd = { .events = POLLIN };
	int i;

	for (i = 0; i < 4 && L.state == LINK_UP && L.fd >= 0; i++) {
		pfd.fd = L.fd;
		if (poll(&pfd, 1, 0) <= 0) {
			break;
		}
		link_readable(NULL, NULL, 0, NULL);
	}
	return L.state == LINK_UP;
}

bool vfsx_link_meta_rides(void)
{
	return L.state == LINK_UP && L.meta;
}

bool vfsx_link_needs_verdict(int op_index)
{
	return op_index < 0 || (L.verdict_mask & (1u << op_index)) != 0;
}

void vfsx_link_post(struct vfsx_msg *m)
{
	int verdict = 0, rc;

	release_held();
	if (L.state != LINK_UP) {
		vfsx_link_spool(m);
		return;
	}
	if (ring_make_room(m->len) < 0) {
		vfsx_link_spool(m);
		return;
	}
	if (L.ev != NULL && flush_im == NULL) {
		flush_im = tevent_create_immediate(NULL);
	}
	if (flush_im == NULL || olen + m->len > OBUF_MAX) {
		rc = send_frame(m);
	} else {
		memcpy(obuf + olen, m->buf, m->len);
		olen += m->len;
		L.sent++;
		rc = 0;
		flush_schedule();
	}
	if (rc < 0) {
		link_fail("post", -rc);
		vfsx_link_spool(m);
		return;
	}
	if (ring_push(L.sent, m) != 0) {
		if (obuf_flush() != 0) {
			link_fail("post", EPIPE);
			vfsx_link_spool(m);
			return;
		}
		/* cannot keep a copy: make sure the service has it */
		rc = link_wait(WAIT_ACK, L.sent, 0, L.hello_timeout_ms,
			       &verdict);
		if (rc < 0) {
			link_fail("no memory for unacked frame", -rc);
		}
	}
}

/*
 * Sends the held report as it is: folded (done), or not yet (its outcome
 * follows in a "done" frame).
 */
static void release_held(void)
{
	if (held_done) {
		held_done = false;
		vfsx_link_post(&held);
		return;
	}
	if (held_seq == 0) {
		return;
	}
	held_seq = 0;
	vfsx_link_post(&held);
}

void vfsx_link_hold(struct vfsx_msg *m, uint64_t seq, const char *key)
{
	release_held();
	held_key[0] = '\0';
	if (key != NULL && strlen(key) < sizeof(held_key)) {
		memcpy(held_key, key, strlen(key) + 1);
	}
	if (L.ev != NULL && flush_im == NULL) {
		flush_im = tevent_create_immediate(NULL);
	}
	if (L.state != LINK_UP || !L.folds || flush_im == NULL || seq == 0) {
		vfsx_link_post(m);
		return;
	}
	held.len = m->len;
	held.nargs = m->nargs;
	held.overflow = false;
	memcpy(held.buf, m->buf, m->len);
	held_seq = seq;
	/* Should the outcome never come, the next flush sends it as it is. */
	flush_schedule();
}

/*
 * Ends the held frame after an argument was added to it (it was len bytes
 * with nargs arguments before). When it does not fit, takes it back: the
 * frame is as it was, and false.
 */
static bool held_end(size_t len, unsigned nargs)
{
	if (vfsx_msg_end(&held) == 0) {
		return true;
	}
	held.len = len;
	held.nargs = nargs;
	held.overflow = false;
	vfsx_msg_end(&held);
	return false;
}

bool vfsx_link_fold(uint64_t seq, int err)
{
	size_t len = held.len;
	unsigned nargs = held.nargs;

	if (seq == 0 || held_seq != seq) {
		return false;
	}
	vfsx_msg_arg_u64(&held, "err", (uint64_t)err);
	if (!held_end(len, nargs)) {
		/* no room for err= in this frame: send it as it is, "done" follows */
		release_held();
		return false;
	}
	held_seq = 0;
	if (held_key[0] != '\0' && L.state == LINK_UP && L.meta) {
		held_done = true;	/* attrs= may join it (vfsx_link_amend) */
		flush_schedule();
		return true;
	}
	vfsx_link_post(&held);
	return true;
}

bool vfsx_link_amendable(const char *key)
{
	return held_done && L.state == LINK_UP && L.meta && key != NULL &&
	       strcmp(key, held_key) == 0;
}

bool vfsx_link_amend(const char *key, const char *arg, uint64_t val)
{
	size_t len = held.len;
	unsigned nargs = held.nargs;
	bool ok;

	if (!vfsx_link_amendable(key)) {
		return false;
	}
	vfsx_msg_arg_hex(&held, arg, val);
	ok = held_end(len, nargs);	/* no room: the report goes as it is */
	release_held();
	return ok;
}
