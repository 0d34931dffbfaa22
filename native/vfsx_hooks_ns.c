/*
 * vfsx hooks for calls that change names and metadata. Each asks for a
 * verdict first, runs the next module, then reports the outcome.
 */
#include "includes.h"
#include "system/filesys.h"
#include "smbd/smbd.h"
#include "vfsx_hooks.h"

/* Reports op on the name dirfsp/atname. *full is freed by the caller. */
static struct vfsx_msg *begin_at(vfs_handle_struct *handle,
				 struct vfsx_call *c, const char *op,
				 const struct files_struct *dirfsp,
				 const struct smb_filename *atname,
				 struct smb_filename **full)
{
	*c = (struct vfsx_call){ 0 };
	if (g_depth > 0) {
		return NULL;
	}
	*full = full_path_from_dirfsp_atname(talloc_tos(), dirfsp, atname);
	if (*full == NULL) {
		return NULL;
	}
	return report_begin(handle, c, op, *full);
}

/* Runs when begin_at could not build the full name (no memory). */
static int lost_name(struct vfsx_call *c, struct smb_filename *full)
{
	return (g_depth == 0 && full == NULL) ? ENOMEM : report_ask(c);
}

int vfsx_mkdirat(vfs_handle_struct *handle, struct files_struct *dirfsp,
		 const struct smb_filename *smb_fname, mode_t mode)
{
	struct smb_filename *full = NULL;
	struct smb_filename shown;
	struct vfsx_call c = { 0 };
	struct vfsx_msg *m = NULL;
	const char *final = NULL;
	int ret, err;

	if (g_depth == 0) {
		full = full_path_from_dirfsp_atname(talloc_tos(), dirfsp,
						    smb_fname);
	}
	if (full != NULL && (final = tmpname_final(full->base_name)) != NULL) {
		/* Samba 4.22+: report the name the user asked for (see vfsx_report.c). */
		const char *slash = strrchr(full->base_name, '/');
		int dirlen = slash != NULL ? (int)(slash + 1 - full->base_name) : 0;

		shown = *full;
		shown.base_name = talloc_asprintf(full, "%.*s%s", dirlen,
						  full->base_name, final);
		if (shown.base_name == NULL) {
			TALLOC_FREE(full);
		}
	}
	if (full != NULL) {
		m = report_begin(handle, &c, "mkdir",
				 final != NULL ? &shown : full);
	}
	if (m != NULL) {
		vfsx_msg_arg_oct(m, "mode", mode);
		c.amend = final == NULL ? full->base_name : NULL;
	}
	err = lost_name(&c, full);
	if (err != 0) {
		TALLOC_FREE(full);
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_MKDIRAT(handle, dirfsp, smb_fname, mode);
	g_depth--;
	if (final != NULL && ret == 0) {
		/* done when the rename has put it in place */
		tmp_mkdir_begin(&c, full->base_name, shown.base_name);
	} else {
		report_done(&c, ret);
	}
	TALLOC_FREE(full);
	return ret;
}

int vfsx_unlinkat(vfs_handle_struct *handle, struct files_struct *dirfsp,
		  const struct smb_filename *smb_fname, int flags)
{
	struct smb_filename *full = NULL;
	struct vfsx_call c;
	const char *op = (flags & AT_REMOVEDIR) ? "rmdir" : "unlink";
	int ret, err;

	begin_at(handle, &c, op, dirfsp, smb_fname, &full);
	err = lost_name(&c, full);
	if (err != 0) {
		TALLOC_FREE(full);
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_UNLINKAT(handle, dirfsp, smb_fname, flags);
	g_depth--;
	if (full != NULL && g_depth == 0) {
		/* a temporary directory removed, never renamed into place: no mkdir happened */
		int saved = errno;

		errno = ECANCELED;
		tmp_mkdir_end(full->base_name, -1);
		errno = saved;
	}
	report_done(&c, ret);
	TALLOC_FREE(full);
	return ret;
}

#if SMB_VFS_INTERFACE_VERSION >= 50
int vfsx_renameat(vfs_handle_struct *handle, struct files_struct *srcfsp,
		  const struct smb_filename *src, struct files_struct *dstfsp,
		  const struct smb_filename *dst,
		  const struct vfs_rename_how *how)
#else
int vfsx_renameat(vfs_handle_struct *handle, struct files_struct *srcfsp,
		  const struct smb_filename *src, struct files_struct *dstfsp,
		  const struct smb_filename *dst)
#endif
{
	struct smb_filename *full = NULL, *to = NULL;
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = begin_at(handle, &c, "rename", srcfsp, src, &full);
	if (m != NULL) {
		to = full_path_from_dirfsp_atname(talloc_tos(), dstfsp, dst);
		if (to == NULL) {
			TALLOC_FREE(full);
		} else {
			arg_name(m, "to", "to_stream", to);
			c.to = to->base_name;
			if (full->stream_name == NULL &&
			    to->stream_name == NULL) {
				c.amend = to->base_name;
			}
		}
#if SMB_VFS_INTERFACE_VERSION >= 50
		if (how != NULL && (how->flags & VFS_RENAME_HOW_NO_REPLACE)) {
			vfsx_msg_arg_u64(m, "noreplace", 1);
		}
#endif
	}
	err = lost_name(&c, full);
	if (err != 0) {
		TALLOC_FREE(full);
		errno = err;
		return -1;
	}
	g_depth++;
#if SMB_VFS_INTERFACE_VERSION >= 50
	ret = SMB_VFS_NEXT_RENAMEAT(handle, srcfsp, src, dstfsp, dst, how);
#else
	ret = SMB_VFS_NEXT_RENAMEAT(handle, srcfsp, src, dstfsp, dst);
#endif
	g_depth--;
	if (full != NULL && g_depth == 0) {
		/* the rename that ends a mkdir under a temporary name */
		tmp_mkdir_end(full->base_name, ret);
	}
	report_done(&c, ret);
	TALLOC_FREE(full);
	TALLOC_FREE(to);
	return ret;
}

#if SMB_VFS_INTERFACE_VERSION >= 52
/*
 * Samba 4.24+ renames a stream through its own call (before, renameat with
 * stream names): reported as a rename of path:stream to path:to_stream.
 */
int vfsx_rename_stream(vfs_handle_struct *handle,
		       struct files_struct *src_fsp, const char *dst_name,
		       bool replace_if_exists)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "rename", src_fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_str(m, "to", src_fsp->fsp_name->base_name);
		vfsx_msg_arg_str(m, "to_stream", dst_name);
		if (!replace_if_exists) {
			vfsx_msg_arg_u64(m, "noreplace", 1);
		}
		c.to = src_fsp->fsp_name->base_name;
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_RENAME_STREAM(handle, src_fsp, dst_name,
					 replace_if_exists);
	g_depth--;
	report_done(&c, ret);
	return ret;
}
#endif

int vfsx_symlinkat(vfs_handle_struct *handle,
		   const struct smb_filename *link_contents,
		   struct files_struct *dirfsp,
		   const struct smb_filename *new_smb_fname)
{
	struct smb_filename *full = NULL;
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = begin_at(handle, &c, "symlink", dirfsp, new_smb_fname, &full);
	if (m != NULL) {
		vfsx_msg_arg_str(m, "target", link_contents->base_name);
	}
	err = lost_name(&c, full);
	if (err != 0) {
		TALLOC_FREE(full);
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_SYMLINKAT(handle, link_contents, dirfsp,
				     new_smb_fname);
	g_depth--;
	report_done(&c, ret);
	TALLOC_FREE(full);
	return ret;
}

int vfsx_linkat(vfs_handle_struct *handle, struct files_struct *srcfsp,
		const struct smb_filename *old_smb_fname,
		struct files_struct *dstfsp,
		const struct smb_filename *new_smb_fname, int flags)
{
	struct smb_filename *full = NULL, *from = NULL;
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = begin_at(handle, &c, "link", dstfsp, new_smb_fname, &full);
	if (m != NULL) {
		from = full_path_from_dirfsp_atname(talloc_tos(), srcfsp,
						    old_smb_fname);
		if (from == NULL) {
			TALLOC_FREE(full);
		} else {
			arg_name(m, "from", "from_stream", from);
		}
	}
	err = lost_name(&c, full);
	if (err != 0) {
		TALLOC_FREE(full);
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_LINKAT(handle, srcfsp, old_smb_fname, dstfsp,
				  new_smb_fname, flags);
	g_depth--;
	report_done(&c, ret);
	TALLOC_FREE(full);
	TALLOC_FREE(from);
	return ret;
}

int vfsx_mknodat(vfs_handle_struct *handle, struct files_struct *dirfsp,
		 const struct smb_filename *smb_fname, mode_t mode,
		 SMB_DEV_T dev)
{
	struct smb_filename *full = NULL;
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = begin_at(handle, &c, "mknod", dirfsp, smb_fname, &full);
	if (m != NULL) {
		vfsx_msg_arg_oct(m, "mode", mode);
		vfsx_msg_arg_u64(m, "dev", (uint64_t)dev);
	}
	err = lost_name(&c, full);
	if (err != 0) {
		TALLOC_FREE(full);
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_MKNODAT(handle, dirfsp, smb_fname, mode, dev);
	g_depth--;
	report_done(&c, ret);
	TALLOC_FREE(full);
	return ret;
}

int vfsx_fchmod(vfs_handle_struct *handle, files_struct *fsp, mode_t mode)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "chmod", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_oct(m, "mode", mode);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_FCHMOD(handle, fsp, mode);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

static void owner_args(struct vfsx_msg *m, uid_t uid, gid_t gid)
{
	vfsx_msg_arg_i64(m, "uid", uid == (uid_t)-1 ? -1 : (int64_t)uid);
	vfsx_msg_arg_i64(m, "gid", gid == (gid_t)-1 ? -1 : (int64_t)gid);
}

int vfsx_fchown(vfs_handle_struct *handle, files_struct *fsp, uid_t uid,
		gid_t gid)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "chown", fsp->fsp_name);
	if (m != NULL) {
		owner_args(m, uid, gid);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_FCHOWN(handle, fsp, uid, gid);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

int vfsx_lchown(vfs_handle_struct *handle,
		const struct smb_filename *smb_fname, uid_t uid, gid_t gid)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "chown", smb_fname);
	if (m != NULL) {
		owner_args(m, uid, gid);
		vfsx_msg_arg_str(m, "nofollow", "1");
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_LCHOWN(handle, smb_fname, uid, gid);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

static void time_arg(struct vfsx_msg *m, const char *key,
		     const struct timespec *ts)
{
	if (!is_omit_timespec(ts)) {
		vfsx_msg_arg_time(m, key, ts->tv_sec, ts->tv_nsec);
	}
}

/* A time set through a handle whose report it rides on (meta_rides). */
static void note_time(struct vfsx_fsp *x, unsigned bit, struct timespec *to,
		      const struct timespec *ts)
{
	if (!is_omit_timespec(ts)) {
		*to = *ts;
		x->meta |= bit;
	}
}

int vfsx_fntimes(vfs_handle_struct *handle, files_struct *fsp,
		 struct smb_file_time *ft)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	struct vfsx_fsp *x = NULL;
	int ret, err;

	if (is_omit_timespec(&ft->atime) && is_omit_timespec(&ft->mtime) &&
	    is_omit_timespec(&ft->ctime) &&
	    is_omit_timespec(&ft->create_time)) {
		/* smbd sets "no change" to all four on some info levels */
		return SMB_VFS_NEXT_FNTIMES(handle, fsp, ft);
	}
	x = meta_rides(handle, fsp, "utimes");
	if (x != NULL) {
		/* What was asked: the layers below fill in the times omitted */
		struct smb_file_time asked = *ft;

		g_depth++;
		ret = SMB_VFS_NEXT_FNTIMES(handle, fsp, ft);
		g_depth--;
		if (ret == 0) {
			note_time(x, M_ATIME, &x->atime, &asked.atime);
			note_time(x, M_MTIME, &x->mtime, &asked.mtime);
			note_time(x, M_CTIME, &x->ctime, &asked.ctime);
			note_time(x, M_BTIME, &x->btime, &asked.create_time);
		}
		return ret;
	}
	m = report_begin(handle, &c, "utimes", fsp->fsp_name);
	if (m != NULL) {
		time_arg(m, "atime", &ft->atime);
		time_arg(m, "mtime", &ft->mtime);
		time_arg(m, "ctime", &ft->ctime);
		time_arg(m, "btime", &ft->create_time);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_FNTIMES(handle, fsp, ft);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

int vfsx_fchflags(vfs_handle_struct *handle, files_struct *fsp,
		  unsigned int flags)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "chflags", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_hex(m, "flags", flags);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_FCHFLAGS(handle, fsp, flags);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

int vfsx_fsetxattr(vfs_handle_struct *handle, files_struct *fsp,
		   const char *name, const void *value, size_t size, int flags)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "setxattr", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_str(m, "name", name);
		vfsx_msg_arg_u64(m, "size", size);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_FSETXATTR(handle, fsp, name, value, size, flags);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

int vfsx_fremovexattr(vfs_handle_struct *handle, files_struct *fsp,
		      const char *name)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "removexattr", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_str(m, "name", name);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_FREMOVEXATTR(handle, fsp, name);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

static int status_ret(NTSTATUS status)
{
	if (NT_STATUS_IS_OK(status)) {
		return 0;
	}
	errno = map_errno_from_nt_status(status);
	return -1;
}

NTSTATUS vfsx_fset_dos_attributes(vfs_handle_struct *handle,
				  files_struct *fsp, uint32_t dosmode)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	struct vfsx_fsp *x = meta_rides(handle, fsp, "setdosattr");
	NTSTATUS status;
	int err;

	if (x != NULL) {
		g_depth++;
		status = SMB_VFS_NEXT_FSET_DOS_ATTRIBUTES(handle, fsp, dosmode);
		g_depth--;
		if (NT_STATUS_IS_OK(status)) {
			x->attrs = dosmode;
			x->meta |= M_ATTRS;
		}
		return status;
	}
	if (attrs_may_amend(handle, fsp)) {
		/* the attributes of a directory just made, a file just renamed */
		g_depth++;
		status = SMB_VFS_NEXT_FSET_DOS_ATTRIBUTES(handle, fsp, dosmode);
		g_depth--;
		if (NT_STATUS_IS_OK(status) &&
		    !vfsx_link_amend(fsp->fsp_name->base_name, "attrs",
				     dosmode)) {
			struct vfsx_fsp alone = { .meta = M_ATTRS,
						  .attrs = dosmode };

			meta_alone(handle, fsp, &alone);
		}
		return status;
	}
	m = report_begin(handle, &c, "setdosattr", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_hex(m, "attrs", dosmode);
	}
	err = report_ask(&c);
	if (err != 0) {
		return map_nt_error_from_unix(err);
	}
	g_depth++;
	status = SMB_VFS_NEXT_FSET_DOS_ATTRIBUTES(handle, fsp, dosmode);
	g_depth--;
	report_done(&c, status_ret(status));
	return status;
}

NTSTATUS vfsx_fset_nt_acl(vfs_handle_struct *handle, files_struct *fsp,
			  uint32_t security_info_sent,
			  const struct security_descriptor *psd)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	NTSTATUS status;
	int err;

	m = report_begin(handle, &c, "setacl", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_str(m, "kind", "nt");
		vfsx_msg_arg_hex(m, "secinfo", security_info_sent);
	}
	err = report_ask(&c);
	if (err != 0) {
		return map_nt_error_from_unix(err);
	}
	g_depth++;
	status = SMB_VFS_NEXT_FSET_NT_ACL(handle, fsp, security_info_sent, psd);
	g_depth--;
	report_done(&c, status_ret(status));
	return status;
}

int vfsx_sys_acl_set_fd(vfs_handle_struct *handle, files_struct *fsp,
			SMB_ACL_TYPE_T type, SMB_ACL_T theacl)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "setacl", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_str(m, "kind", "posix");
		vfsx_msg_arg_u64(m, "type", (uint64_t)type);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_SYS_ACL_SET_FD(handle, fsp, type, theacl);
	g_depth--;
	report_done(&c, ret);
	return ret;
}
