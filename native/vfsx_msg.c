/*
 * vfsx wire encoding. See docs/protocol.md.
 *
 * A frame is a 4-byte big-endian payload length and the payload
 * "user:operation:origpath:k=v,k=v". Every field and value is escaped so
 * that only printable ASCII other than % : , = stands for itself; every
 * other byte is %HH. Any byte a name can hold therefore round-trips.
 */
#include "vfsx_msg.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char hexdig[] = "0123456789ABCDEF";

static bool plain_byte(uint8_t c)
{
	if (c <= 0x20 || c >= 0x7f) {
		return false;
	}
	return c != '%' && c != ':' && c != ',' && c != '=';
}

static void put_raw(struct vfsx_msg *m, const void *p, size_t n)
{
	if (m->overflow || n > sizeof(m->buf) - m->len) {
		m->overflow = true;
		return;
	}
	memcpy(m->buf + m->len, p, n);
	m->len += n;
}

static void put_escaped(struct vfsx_msg *m, const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n && !m->overflow; i++) {
		uint8_t c = p[i];

		if (plain_byte(c)) {
			put_raw(m, &c, 1);
		} else {
			uint8_t e[3] = { '%', hexdig[c >> 4], hexdig[c & 15] };

			put_raw(m, e, 3);
		}
	}
}

static void put_cstr_escaped(struct vfsx_msg *m, const char *s)
{
	if (s != NULL) {
		put_escaped(m, (const uint8_t *)s, strlen(s));
	}
}

void vfsx_msg_begin(struct vfsx_msg *m, const char *user, const char *op,
		    const char *origpath)
{
	m->len = 4;
	m->nargs = 0;
	m->overflow = false;
	put_cstr_escaped(m, user);
	put_raw(m, ":", 1);
	put_cstr_escaped(m, op);
	put_raw(m, ":", 1);
	put_cstr_escaped(m, origpath);
	put_raw(m, ":", 1);
}

static void put_key(struct vfsx_msg *m, const char *key)
{
	if (m->nargs++ > 0) {
		put_raw(m, ",", 1);
	}
	put_raw(m, key, strlen(key));	/* keys are [a-z0-9_] literals */
	put_raw(m, "=", 1);
}

void vfsx_msg_arg_bytes(struct vfsx_msg *m, const char *key,
			const void *val, size_t len)
{
	put_key(m, key);
	put_escaped(m, val, len);
}

void vfsx_msg_arg_str(struct vfsx_msg *m, const char *key, const char *val)
{
	put_key(m, key);
	put_cstr_escaped(m, val);
}

static void put_fmt_arg(struct vfsx_msg *m, const char *key, const char *s)
{
	put_key(m, key);
	put_raw(m, s, strlen(s));
}

void vfsx_msg_arg_u64(struct vfsx_msg *m, const char *key, uint64_t val)
{
	char s[24];

	snprintf(s, sizeof(s), "%" PRIu64, val);
	put_fmt_arg(m, key, s);
}

void vfsx_msg_arg_i64(struct vfsx_msg *m, const char *key, int64_t val)
{
	char s[24];

	snprintf(s, sizeof(s), "%" PRId64, val);
	put_fmt_arg(m, key, s);
}

void vfsx_msg_arg_oct(struct vfsx_msg *m, const char *key, unsigned val)
{
	char s[16];

	snprintf(s, sizeof(s), "%o", val);
	put_fmt_arg(m, key, s);
}

void vfsx_msg_arg_hex(struct vfsx_msg *m, const char *key, uint64_t val)
{
	char s[24];

	snprintf(s, sizeof(s), "%" PRIx64, val);
	put_fmt_arg(m, key, s);
}

void vfsx_msg_arg_time(struct vfsx_msg *m, const char *key,
		       int64_t sec, long nsec)
{
	char s[40];

	snprintf(s, sizeof(s), "%" PRId64 ".%09ld", sec, nsec);
	put_fmt_arg(m, key, s);
}

void vfsx_msg_arg_ranges(struct vfsx_msg *m, const char *key,
			 const struct vfsx_ranges *rs)
{
	unsigned i;
	char s[48];

	put_key(m, key);
	for (i = 0; i < rs->n; i++) {
		snprintf(s, sizeof(s), "%s%" PRIu64 "+%" PRIu64,
			 i == 0 ? "" : ";", rs->r[i].off,
			 rs->r[i].end - rs->r[i].off);
		put_raw(m, s, strlen(s));
	}
}

int vfsx_msg_end(struct vfsx_msg *m)
{
	uint32_t n;

	if (m->overflow || m->len - 4 > VFSX_FRAME_MAX) {
		return -EMSGSIZE;
	}
	n = (uint32_t)(m->len - 4);
	m->buf[0] = n >> 24;
	m->buf[1] = n >> 16;
	m->buf[2] = n >> 8;
	m->buf[3] = n;
	return 0;
}

/* Merges the two neighbours with the smallest gap between them. */
static void ranges_squeeze(struct vfsx_ranges *rs)
{
	unsigned i, best = 0;
	uint64_t gap = UINT64_MAX;

	for (i = 0; i + 1 < rs->n; i++) {
		uint64_t g = rs->r[i + 1].off - rs->r[i].end;

		if (g < gap) {
			gap = g;
			best = i;
		}
	}
	rs->r[best].end = rs->r[best + 1].end;
	memmove(&rs->r[best + 1], &rs->r[best + 2],
		(rs->n - best - 2) * sizeof(rs->r[0]));
	rs->n--;
}

void vfsx_ranges_add(struct vfsx_ranges *rs, uint64_t off, uint64_t len)
{
	uint64_t end = (len > UINT64_MAX - off) ? UINT64_MAX : off + len;
	unsigned i, j;

	if (len == 0) {
		return;
	}
	/* Fast path: sequential writes extend the last range. */
	if (rs->n > 0 && off >= rs->r[rs->n - 1].off &&
	    off <= rs->r[rs->n - 1].end) {
		if (end > rs->r[rs->n - 1].end) {
			rs->r[rs->n - 1].end = end;
		}
		return;
	}
	/* i: first range that ends at or after off (touching counts). */
	for (i = 0; i < rs->n && rs->r[i].end < off; i++) {
	}
	/* j: first range that starts after end (touching counts as overlap). */
	for (j = i; j < rs->n && rs->r[j].off <= end; j++) {
	}
	if (j > i) {
		/* merge [i, j) with the new range into slot i */
		if (rs->r[i].off < off) {
			off = rs->r[i].off;
		}
		if (rs->r[j - 1].end > end) {
			end = rs->r[j - 1].end;
		}
		rs->r[i].off = off;
		rs->r[i].end = end;
		memmove(&rs->r[i + 1], &rs->r[j],
			(rs->n - j) * sizeof(rs->r[0]));
		rs->n -= j - i - 1;
		return;
	}
	if (rs->n == VFSX_MAX_RANGES) {
		ranges_squeeze(rs);
		vfsx_ranges_add(rs, off, end - off);
		return;
	}
	memmove(&rs->r[i + 1], &rs->r[i], (rs->n - i) * sizeof(rs->r[0]));
	rs->r[i].off = off;
	rs->r[i].end = end;
	rs->n++;
}

static int parse_u64(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
	const uint8_t *p = *pp;
	uint64_t v = 0;

	if (p == end || *p < '0' || *p > '9') {
		return -EPROTO;
	}
	while (p < end && *p >= '0' && *p <= '9') {
		if (v > (UINT64_MAX - 9) / 10) {
			return -EPROTO;
		}
		v = v * 10 + (*p - '0');
		p++;
	}
	*pp = p;
	*out = v;
	return 0;
}

const char *const vfsx_op_names[VFSX_N_OPS] = {
	"create", "close", "fsync", "truncate", "mkdir", "rmdir", "unlink",
	"rename", "symlink", "link", "mknod", "chmod", "chown", "utimes",
	"chflags", "setxattr", "removexattr", "setdosattr", "setacl",
};

int vfsx_op_index(const char *op)
{
	int i;

	for (i = 0; i < VFSX_N_OPS; i++) {
		if (strcmp(op, vfsx_op_names[i]) == 0) {
			return i;
		}
	}
	return -1;
}

uint32_t vfsx_ops_mask(const uint8_t *ops, size_t len)
{
	const uint32_t all = (1u << VFSX_N_OPS) - 1;
	uint32_t mask = 0;
	size_t i = 0;

	if (ops == NULL || (len == 1 && ops[0] == '*')) {
		return all;
	}
	while (i < len && ops[i] != ':') {
		char name[16];
		size_t n = 0;
		int idx;

		while (i < len && ops[i] != ',' && ops[i] != ':') {
			if (n + 1 < sizeof(name)) {
				name[n++] = (char)ops[i];
			}
			i++;
		}
		name[n] = '\0';
		if (i < len && ops[i] == ',') {
			i++;
		}
		idx = vfsx_op_index(name);
		mask |= idx < 0 ? 0 : (1u << idx);
	}
	return mask;
}

int vfsx_reply_parse(const uint8_t *p, size_t len, char *kind,
		     uint64_t *seq, int *err, const uint8_t **ops,
		     size_t *ops_len)
{
	const uint8_t *end = p + len;
	uint64_t e = 0;

	*seq = 0;
	*err = 0;
	*ops = NULL;
	*ops_len = 0;
	if (len > 12 && memcmp(p, "transparent:", 12) == 0) {
		*kind = 'T';
		p += 12;
	} else if (len > 5 && memcmp(p, "fail:", 5) == 0) {
		*kind = 'F';
		p += 5;
	} else if (len > 12 && memcmp(p, "unavailable:", 12) == 0) {
		*kind = 'U';
		p += 12;
	} else if (len > 4 && memcmp(p, "ack:", 4) == 0) {
		*kind = 'A';
		p += 4;
	} else if (len > 6 && memcmp(p, "hello:", 6) == 0) {
		*kind = 'H';
		p += 6;
	} else {
		return -EPROTO;
	}
	if (parse_u64(&p, end, seq) != 0) {
		return -EPROTO;
	}
	if (*kind == 'F') {
		if (p == end || *p != ':') {
			return -EPROTO;
		}
		p++;
		if (parse_u64(&p, end, &e) != 0 || e == 0 || e > 4095) {
			return -EPROTO;
		}
		*err = (int)e;
	}
	if (*kind == 'H' && p < end && *p == ':') {
		bool rules = false;

		*ops = p + 1;
		*ops_len = end - p - 1;
		for (p++; p < end; p++) {
			if ((*p >= 'a' && *p <= 'z') || *p == ',' ||
			    (!rules && *p == '*')) {
				continue;
			}
			if (!rules && *p == ':') {
				rules = true;
				continue;
			}
			if (rules && ((*p >= '0' && *p <= '9') || *p == '.' ||
				      *p == '/' || *p == ';' || *p == '_' ||
				      *p == '~' || *p == '-')) {
				continue;
			}
			return -EPROTO;
		}
	}
	return p == end ? 0 : -EPROTO;
}

/* Reads up to the next of stop (or the end) into buf; returns the length or -1 if it does not fit. */
static int take_token(const uint8_t **p, const uint8_t *end, const char *stop,
		      char *buf, size_t size)
{
	size_t n = 0;

	while (*p < end && strchr(stop, **p) == NULL) {
		if (n + 1 >= size) {
			return -1;
		}
		buf[n++] = (char)**p;
		(*p)++;
	}
	buf[n] = '\0';
	return (int)n;
}

int vfsx_rules_parse(const uint8_t *ops, size_t len, struct vfsx_rules *out)
{
	const uint8_t *p = ops, *end = ops + len;
	char tok[32];

	*out = (struct vfsx_rules){ 0 };
	while (p < end && *p != ':') {
		p++;
	}
	if (p == end) {
		return 1;
	}
	p++;
	while (p < end) {
		struct vfsx_rule *r;
		long e;

		if (out->n == VFSX_MAX_RULES) {
			return -1;
		}
		r = &out->r[out->n++];
		if (take_token(&p, end, "/", tok, sizeof(tok)) <= 0 || p == end) {
			return -1;
		}
		e = strtol(tok, NULL, 10);
		if (e <= 0 || e > 4095) {
			return -1;
		}
		r->err = (int)e;
		p++;
		do {
			int idx;

			if (*p == ',') {
				p++;
			}
			if (take_token(&p, end, ",/", tok, sizeof(tok)) <= 0) {
				return -1;
			}
			idx = vfsx_op_index(tok);
			if (idx < 0) {
				return -1;
			}
			r->ops |= 1u << idx;
		} while (p < end && *p == ',');
		if (p == end || *p != '/') {
			return -1;
		}
		p++;
		do {
			if (*p == ',') {
				p++;
			}
			if (r->n_ext == VFSX_MAX_EXTS ||
			    take_token(&p, end, ",;", r->ext[r->n_ext],
				       VFSX_EXT_MAX) < 2 ||
			    r->ext[r->n_ext][0] != '.') {
				return -1;
			}
			r->n_ext++;
		} while (p < end && *p == ',');
		if (p < end) {
			if (*p != ';') {
				return -1;
			}
			p++;
		}
	}
	return out->n > 0 ? 0 : -1;
}

int vfsx_rules_check(const struct vfsx_rules *rules, int op, const char *name)
{
	const char *base, *dot;
	char ext[VFSX_EXT_MAX];
	size_t n, i;
	unsigned k, j;

	if (name == NULL || op < 0) {
		return 0;
	}
	base = strrchr(name, '/');
	base = base == NULL ? name : base + 1;
	dot = strrchr(base, '.');
	if (dot == NULL || dot == base) {
		return 0; /* no extension: no rule here matches */
	}
	n = strlen(dot);
	for (i = 0; i < n; i++) {
		if ((unsigned char)dot[i] >= 0x80) {
			return -1; /* case folding beyond ASCII: the service decides */
		}
	}
	if (n >= sizeof(ext)) {
		return 0; /* longer than any extension a rule may name */
	}
	for (i = 0; i <= n; i++) {
		ext[i] = (dot[i] >= 'A' && dot[i] <= 'Z') ? dot[i] - 'A' + 'a' : dot[i];
	}
	for (k = 0; k < rules->n; k++) {
		const struct vfsx_rule *r = &rules->r[k];

		if ((r->ops & (1u << op)) == 0) {
			continue;
		}
		for (j = 0; j < r->n_ext; j++) {
			if (strcmp(r->ext[j], ext) == 0) {
				return r->err;
			}
		}
	}
	return 0;
}
