/*
 * vfsx wire encoding: frames, escaped fields and dirty-range lists.
 * Pure C with no Samba dependency so that it can be tested on its own.
 * The format is documented in docs/protocol.md.
 */
#ifndef VFSX_MSG_H
#define VFSX_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VFSX_PROTO_VERSION 2
/* A hello answer of this version or later: the service takes folded reports (docs/protocol.md). */
#define VFSX_PROTO_FOLDS 3
/* ... and metadata set through a handle on its close/fsync report (attrs=, mtime=, ...). */
#define VFSX_PROTO_META 4
#define VFSX_FRAME_MAX 65536	/* payload bytes; the server enforces it too */
#define VFSX_MAX_RANGES 32

struct vfsx_msg {
	size_t len;		/* bytes used in buf, including the header */
	unsigned nargs;
	bool overflow;
	uint8_t buf[4 + VFSX_FRAME_MAX];
};

struct vfsx_range {
	uint64_t off;
	uint64_t end;		/* exclusive */
};

struct vfsx_ranges {
	unsigned n;
	struct vfsx_range r[VFSX_MAX_RANGES];
};

void vfsx_msg_begin(struct vfsx_msg *m, const char *user, const char *op,
		    const char *origpath);
void vfsx_msg_arg_bytes(struct vfsx_msg *m, const char *key,
			const void *val, size_t len);
void vfsx_msg_arg_str(struct vfsx_msg *m, const char *key, const char *val);
void vfsx_msg_arg_u64(struct vfsx_msg *m, const char *key, uint64_t val);
void vfsx_msg_arg_i64(struct vfsx_msg *m, const char *key, int64_t val);
void vfsx_msg_arg_oct(struct vfsx_msg *m, const char *key, unsigned val);
void vfsx_msg_arg_hex(struct vfsx_msg *m, const char *key, uint64_t val);
void vfsx_msg_arg_time(struct vfsx_msg *m, const char *key,
		       int64_t sec, long nsec);
void vfsx_msg_arg_ranges(struct vfsx_msg *m, const char *key,
			 const struct vfsx_ranges *rs);
/* Writes the length header. Returns 0, or -EMSGSIZE if the frame overflowed. */
int vfsx_msg_end(struct vfsx_msg *m);

void vfsx_ranges_add(struct vfsx_ranges *rs, uint64_t off, uint64_t len);

/*
 * Parses one reply payload: "transparent:SEQ", "fail:SEQ:ERRNO",
 * "unavailable:SEQ", "ack:N" or "hello:VERSION[:OPS]" (OPS: the
 * comma-separated operations the service's policy may deny, "*" for all).
 * Returns 0 and fills the out values, or -EPROTO.
 * kind: 'T', 'F', 'U', 'A' or 'H'; for 'H', ops and ops_len give OPS (or NULL).
 */
int vfsx_reply_parse(const uint8_t *p, size_t len, char *kind,
		     uint64_t *seq, int *err, const uint8_t **ops,
		     size_t *ops_len);

/* Operations in the canonical order (bit i of a verdict mask = op i). */
extern const char *const vfsx_op_names[];
#define VFSX_N_OPS 19
/* Index of op in vfsx_op_names, or -1. */
int vfsx_op_index(const char *op);
/* Verdict mask from a hello's OPS list; all bits when ops is NULL or "*". */
uint32_t vfsx_ops_mask(const uint8_t *ops, size_t len);

/*
 * A policy simple enough for the module to apply itself, sent after the
 * OPS list of a hello answer: "ERRNO/op,op/.ext,.ext;..." (deny rules by
 * operation and file extension only; see docs/protocol.md).
 */
#define VFSX_MAX_RULES 8
#define VFSX_MAX_EXTS 32
#define VFSX_EXT_MAX 17	/* ".": 16 characters, NUL */
struct vfsx_rule {
	int err;
	uint32_t ops;
	unsigned n_ext;
	char ext[VFSX_MAX_EXTS][VFSX_EXT_MAX];
};
struct vfsx_rules {
	unsigned n;
	struct vfsx_rule r[VFSX_MAX_RULES];
};
/* Rules from a hello's OPS field (what follows its ':'). 0: some, 1: none, -1: malformed. */
int vfsx_rules_parse(const uint8_t *ops, size_t len, struct vfsx_rules *out);
/*
 * The errno the rules deny op on name with, 0 to allow, or -1 when the
 * module cannot decide (an extension that is not plain ASCII): ask.
 */
int vfsx_rules_check(const struct vfsx_rules *r, int op, const char *name);

#endif
