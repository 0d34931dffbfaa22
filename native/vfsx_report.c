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

/*
 * Samba 4.22 and later ("vfs mkdir use tmp name", on by default) make a
 * directory as ".::TMPNAME:D:<id>:<name>" beside <name>, set its DOS
 * attributes and ACL there, then rename it into place. vfsx reports that
 * whole dance as what the user did: one mkdir of <name>, asked for before
 * the temporary directory exists and done when the rename has put it in
 * place (or failed). Calls on the temporary name in between (DOS
 * attributes, ACLs) are reported under the final name; the rename into
 * place and the removal of a failed one are not reported. One slot is
 * enough: smbd runs a mkdir to its end on its one thread.
 */
#define TMPNAME_PREFIX ".::TMPNAME:D:"

static struct {
	struct vfsx_call c;
	char *tmp;	/* share-relative temporary name, NULL when idle */
	char *final;	/* and the name it is made for */
} g_tmp_mkdir;

const char *tmpname_final(const char *path)
{
#if SMB_VFS_INTERFACE_VERSION >= 50
	const char *base = strrchr(path, '/');
	const char *colon = NULL;

	base = base != NULL ? base + 1 : path;
	if (strncmp(base, TMPNAME_PREFIX, sizeof(TMPNAME_PREFIX) - 1) != 0) {
		return NULL;
	}
	colon = strchr(base + sizeof(TMPNAME_PREFIX) - 1, ':');
	if (colon != NULL && colon[1] != '\0') {
		return colon + 1;
	}
#endif
	return NULL;
}

/*
 * 0: path is not the temporary directory being made; 1: it is that
 * directory; 2: it is inside it.
 */
static int in_tmp_mkdir(const char *path)
{
	size_t n;

	if (g_tmp_mkdir.tmp == NULL) {
		return 0;
	}
	n = strlen(g_tmp_mkdir.tmp);
	if (strncmp(path, g_tmp_mkdir.tmp, n) != 0) {
		return 0;
	}
	return path[n] == '\0' ? 1 : path[n] == '/' ? 2 : 0;
}

void tmp_mkdir_begin(struct vfsx_call *c, const char *tmp, const char *final)
{
	tmp_mkdir_end(NULL, 0); /* never happens: an earlier one still open */
	if (!c->asked) {
		return;
	}
	g_tmp_mkdir.tmp = talloc_strdup(NULL, tmp);
	g_tmp_mkdir.final = g_tmp_mkdir.tmp != NULL
		? talloc_strdup(g_tmp_mkdir.tmp, final) : NULL;
	if (g_tmp_mkdir.final == NULL) {
		TALLOC_FREE(g_tmp_mkdir.tmp);
		report_done(c, 0);
		return;
	}
	g_tmp_mkdir.c = *c;
	g_tmp_mkdir.c.path = NULL;
	g_tmp_mkdir.c.to = NULL;
}

bool tmp_mkdir_end(const char *path, int ret)
{
	if (g_tmp_mkdir.tmp == NULL ||
	    (path != NULL && strcmp(path, g_tmp_mkdir.tmp) != 0)) {
		return false;
	}
	report_done(&g_tmp_mkdir.c, ret);
	TALLOC_FREE(g_tmp_mkdir.tmp);
	g_tmp_mkdir.final = NULL;
	g_tmp_mkdir.c = (struct vfsx_call){ 0 };
	return true;
}

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
	struct smb_filename shown;
	int tmp;

	*c = (struct vfsx_call){ 0 };
	if (g_depth > 0) {
		return NULL;
	}
	tmp = in_tmp_mkdir(name->base_name);
	if (tmp == 1 && (strcmp(op, "rename") == 0 || strcmp(op, "rmdir") == 0)) {
		return NULL; /* the end of the mkdir under a temporary name */
	}
	if (tmp != 0) {
		shown = *name;
		shown.base_name = talloc_asprintf(talloc_tos(), "%s%s",
			g_tmp_mkdir.final,
			name->base_name + strlen(g_tmp_mkdir.tmp));
		if (shown.base_name == NULL) {
			return NULL;
		}
		name = &shown;
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

/* The outcome of report c: folded into its held frame, else a "done" frame. */
static void send_done(struct vfsx_call *c, int err)
{
	if (vfsx_link_fold(c->seq, err)) {
		return;
	}
	vfsx_msg_begin(&g_msg, c->sh->user, "done", c->sh->origpath);
	vfsx_msg_arg_u64(&g_msg, "seq", c->seq);
	vfsx_msg_arg_u64(&g_msg, "err", (uint64_t)err);
	if (vfsx_msg_end(&g_msg) == 0) {
		vfsx_link_post(&g_msg);
	}
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
		if (c->sh->deny && !vfsx_link_alive()) {
			return c->sh->deny_errno;
		}
		vfsx_msg_arg_u64(&g_msg, "async", 1);
		if (vfsx_msg_end(&g_msg) != 0) {
			DBG_ERR("vfsx: message too large, seq=%" PRIu64 "\n",
				c->seq);
			return c->sh->deny ? c->sh->deny_errno : 0;
		}
		vfsx_link_hold(&g_msg, c->seq,
			       c->sh->meta_rides ? c->amend : NULL);
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
		/* ...of a call that will not happen: its outcome says so. */
		send_done(c, c->sh->deny_errno);
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
		send_done(c, ret < 0 ? saved : 0);
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

/*
 * smbd sets the DOS attributes of a file it creates, and the write time of
 * a file written through a handle when it closes it. Reported alone, that
 * is four frames and four records per file put (create, setdosattr,
 * utimes, close), each woken for and handled by the service and the
 * replicator, though the close makes the replicator read the file's
 * metadata anyway. So metadata set through a handle whose content report
 * (close, fsync) will follow rides on that report as its arguments: two
 * frames per put. Only when nothing waits for it (an async, non-strict
 * share, an operation the policy cannot deny), the link is up and the
 * service said it takes it (hello:4). A call that fails changed nothing and
 * is not reported then. What rides is lost with the content state if smbd
 * dies before the close, as the dirty ranges are (the scrub repairs both).
 */
static bool may_ride(vfs_handle_struct *handle, files_struct *fsp,
		     const char *op)
{
	struct vfsx_share *sh = NULL;

	if (g_depth > 0 || fsp->fsp_name->stream_name != NULL) {
		return false;
	}
	SMB_VFS_HANDLE_GET_DATA(handle, sh, struct vfsx_share, return false);
	return sh->meta_rides && sh->async && !sh->strict &&
	       vfsx_link_meta_rides() &&
	       !vfsx_link_needs_verdict(vfsx_op_index(op));
}

/*
 * The same for the DOS attributes smbd sets on a directory it made or a
 * file it renamed: they join that report, still held (vfsx_link_amend).
 */
bool attrs_may_amend(vfs_handle_struct *handle, files_struct *fsp)
{
	return may_ride(handle, fsp, "setdosattr") &&
	       vfsx_link_amendable(fsp->fsp_name->base_name);
}

struct vfsx_fsp *meta_rides(vfs_handle_struct *handle, files_struct *fsp,
			    const char *op)
{
	struct vfsx_fsp *x = NULL;

	if (!may_ride(handle, fsp, op)) {
		return NULL;
	}
	x = fsp_ext(handle, fsp, false);
	if (x == NULL || (x->flags == 0 && x->ranges.n == 0)) {
		return NULL;
	}
	return x;
}

static void times_args(struct vfsx_msg *m, const struct vfsx_fsp *x)
{
	if (x->meta & M_ATIME) {
		vfsx_msg_arg_time(m, "atime", x->atime.tv_sec, x->atime.tv_nsec);
	}
	if (x->meta & M_MTIME) {
		vfsx_msg_arg_time(m, "mtime", x->mtime.tv_sec, x->mtime.tv_nsec);
	}
	if (x->meta & M_CTIME) {
		vfsx_msg_arg_time(m, "ctime", x->ctime.tv_sec, x->ctime.tv_nsec);
	}
	if (x->meta & M_BTIME) {
		vfsx_msg_arg_time(m, "btime", x->btime.tv_sec, x->btime.tv_nsec);
	}
}

void meta_args(struct vfsx_msg *m, const struct vfsx_fsp *x)
{
	if (x->meta & M_ATTRS) {
		vfsx_msg_arg_hex(m, "attrs", x->attrs);
	}
	times_args(m, x);
}

void meta_alone(vfs_handle_struct *handle, files_struct *fsp,
		struct vfsx_fsp *x)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;

	if (x->meta & M_ATTRS) {
		m = report_begin(handle, &c, "setdosattr", fsp->fsp_name);
		if (m != NULL) {
			vfsx_msg_arg_hex(m, "attrs", x->attrs);
			report_after(&c, 0, 0);
		}
	}
	if (x->meta & ~M_ATTRS) {
		m = report_begin(handle, &c, "utimes", fsp->fsp_name);
		if (m != NULL) {
			times_args(m, x);
			report_after(&c, 0, 0);
		}
	}
	x->meta = 0;
}

