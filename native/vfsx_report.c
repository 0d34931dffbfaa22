/*
 * vfsx report helpers shared by the hooks: building a message for one
 * call, asking for its verdict, reporting its outcome, and the per-file
 * state (dirty ranges, flags) kept as an fsp extension.
 */
#include "includes.h"
#include "system/filesys.h"
#include "smbd/smbd.h"
#include "vfsx_hooks.h"

struct vfsx_msg g_msg;
int g_depth;

void arg_name(struct vfsx_msg *m, const char *key,
		     const char *stream_key, const struct smb_filename *n)
{
	vfsx_msg_arg_str(m, key, n->base_name);
	if (n->stream_name != NULL) {
		vfsx_msg_arg_str(m, stream_key, n->stream_name);
	}
}

struct vfsx_msg *report_begin(vfs_handle_struct *handle,
				     struct vfsx_call *c, const char *op,
				     const struct smb_filename *name)
{
	*c = (struct vfsx_call){ 0 };
	if (g_depth > 0) {
		return NULL;
	}
	SMB_VFS_HANDLE_GET_DATA(handle, c->sh, struct vfsx_share, return NULL);
	c->active = true;
	c->op = vfsx_op_index(op);
	c->seq = vfsx_link_next_seq();
	vfsx_msg_begin(&g_msg, c->sh->user, op, c->sh->origpath);
	vfsx_msg_arg_u64(&g_msg, "seq", c->seq);
	vfsx_msg_arg_str(&g_msg, "share", c->sh->share);
	arg_name(&g_msg, "path", "stream", name);
	c->path = name->base_name;
	return &g_msg;
}

/* Returns 0 to let the call proceed, or the errno to fail it with. */
int report_ask(struct vfsx_call *c)
{
	const struct vfsx_rules *rules = NULL;
	int verdict = 0, rc, local = -1;

	if (!c->active) {
		return 0;
	}
	if (c->sh->async && !c->sh->strict && vfsx_link_needs_verdict(c->op) &&
	    (rules = vfsx_link_rules()) != NULL) {
		/* The service sent its policy: decide here, without a round trip. */
		int e1 = vfsx_rules_check(rules, c->op, c->path);
		int e2 = vfsx_rules_check(rules, c->op, c->to);

		if (e1 >= 0 && e2 >= 0) {
			local = e1 > 0 ? e1 : e2;
		}
	}
	if (local > 0) {
		/* Denied here: the service still hears of it (audit), records nothing. */
		vfsx_msg_arg_u64(&g_msg, "denied", local);
		vfsx_msg_arg_u64(&g_msg, "async", 1);
		if (vfsx_msg_end(&g_msg) == 0) {
			vfsx_link_post(&g_msg);
		}
		return local;
	}
	if (c->sh->async && (local == 0 || !vfsx_link_needs_verdict(c->op))) {
		/* No rule can deny it (or none did, here): record it without waiting. */
		if (!vfsx_link_up() && c->sh->deny) {
			return c->sh->deny_errno;
		}
		vfsx_msg_arg_u64(&g_msg, "async", 1);
		if (vfsx_msg_end(&g_msg) != 0) {
			DBG_ERR("vfsx: message too large, seq=%" PRIu64 "\n",
				c->seq);
			return c->sh->deny ? c->sh->deny_errno : 0;
		}
		vfsx_link_post(&g_msg);
		c->asked = true;
		return 0;
	}
	if (c->sh->strict) {
		vfsx_msg_arg_u64(&g_msg, "strict", 1);
	}
	if (vfsx_msg_end(&g_msg) != 0) {
		DBG_ERR("vfsx: message too large, seq=%" PRIu64 "\n", c->seq);
		return c->sh->deny ? c->sh->deny_errno : 0;
	}
	rc = vfsx_link_ask(&g_msg, c->seq, c->sh->timeout_ms, &verdict);
	if (rc == 0) {
		c->asked = verdict == 0;
		return verdict;
	}
	/* The link recorded the report anyway (spool). */
	if (c->sh->deny) {
		return c->sh->deny_errno;
	}
	c->asked = true;
	return 0;
}

/* Reports the outcome of an allowed call; keeps errno. */
void report_done(struct vfsx_call *c, int ret)
{
	int saved = errno;

	if (c->asked) {
		vfsx_msg_begin(&g_msg, c->sh->user, "done", c->sh->origpath);
		vfsx_msg_arg_u64(&g_msg, "seq", c->seq);
		vfsx_msg_arg_u64(&g_msg, "err", ret < 0 ? (uint64_t)saved : 0);
		if (vfsx_msg_end(&g_msg) == 0) {
			vfsx_link_post(&g_msg);
		}
	}
	errno = saved;
}

/* Reports a call that already happened (close, fsync); keeps errno. */
void report_after(struct vfsx_call *c, int ret, int err)
{
	int saved = errno, verdict = 0;

	vfsx_msg_arg_u64(&g_msg, "err", ret < 0 ? (uint64_t)err : 0);
	if (c->sh->async && !vfsx_link_needs_verdict(c->op)) {
		vfsx_msg_arg_u64(&g_msg, "async", 1);
		if (vfsx_msg_end(&g_msg) == 0) {
			vfsx_link_post(&g_msg);
		}
		errno = saved;
		return;
	}
	if (c->sh->strict) {
		vfsx_msg_arg_u64(&g_msg, "strict", 1);
	}
	if (vfsx_msg_end(&g_msg) != 0) {
		DBG_ERR("vfsx: message too large, seq=%" PRIu64 "\n", c->seq);
	} else {
		/* on failure the link spools the report itself */
		(void)vfsx_link_ask(&g_msg, c->seq, c->sh->timeout_ms,
				    &verdict);
	}
	errno = saved;
}

struct vfsx_fsp *fsp_ext(vfs_handle_struct *handle, files_struct *fsp,
				bool create)
{
	struct vfsx_fsp *x = VFS_FETCH_FSP_EXTENSION(handle, fsp);

	if (x == NULL && create) {
		x = VFS_ADD_FSP_EXTENSION(handle, fsp, struct vfsx_fsp, NULL);
		if (x != NULL) {
			*x = (struct vfsx_fsp){ 0 };
		}
	}
	return x;
}

void flags_arg(struct vfsx_msg *m, unsigned flags)
{
	char s[4];
	int n = 0;

	if (flags & F_CREATED) {
		s[n++] = 'c';
	}
	if (flags & F_TRUNCATED) {
		s[n++] = 't';
	}
	if (flags & F_APPEND) {
		s[n++] = 'a';
	}
	s[n] = '\0';
	vfsx_msg_arg_str(m, "flags", s);
}
