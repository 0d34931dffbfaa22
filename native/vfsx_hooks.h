/*
 * Internal interface between the vfsx hook files.
 */
#ifndef VFSX_HOOKS_H
#define VFSX_HOOKS_H

#include "vfsx_link.h"

#define F_CREATED 0x1u
#define F_TRUNCATED 0x2u
#define F_APPEND 0x4u	/* a write at an unknown offset (append) */

/* Metadata set through a handle whose content report will follow (meta_rides). */
#define M_ATTRS 0x1u
#define M_ATIME 0x2u
#define M_MTIME 0x4u
#define M_CTIME 0x8u
#define M_BTIME 0x10u

struct vfsx_share {
	const char *share;
	const char *origpath;
	const char *user;
	int timeout_ms;
	bool deny;
	int deny_errno;
	bool async;	/* vfsx:async: ops no policy rule can deny do not wait */
	bool strict;	/* vfsx:strict: a verdict waits until the report is durable */
	bool meta_rides;	/* vfsx:fold metadata: see meta_rides() */
};

struct vfsx_fsp {
	unsigned flags;
	struct vfsx_ranges ranges;
	/* M_* set through this handle, reported with its content (meta_rides) */
	unsigned meta;
	uint32_t attrs;
	struct timespec atime, mtime, ctime, btime;
};

/* One report in flight; smbd runs every VFS call on its main thread. */
struct vfsx_call {
	struct vfsx_share *sh;
	uint64_t seq;
	int op;		/* index in vfsx_op_names */
	bool active;
	bool asked;
	const char *path;	/* the names the policy looks at */
	const char *to;
	/* A name smbd may set DOS attributes on right after (vfsx_link_amend) */
	const char *amend;
};

extern struct vfsx_msg g_msg;	/* one report at a time: smbd's main thread */
extern int g_depth;		/* > 0 while a reported call runs below us */

void arg_name(struct vfsx_msg *m, const char *key, const char *stream_key,
	      const struct smb_filename *n);
/* Starts a report; NULL when this call is nested in a reported one. */
struct vfsx_msg *report_begin(vfs_handle_struct *handle, struct vfsx_call *c,
			      const char *op, const struct smb_filename *name);
/* Returns 0 to let the call proceed, or the errno to fail it with. */
int report_ask(struct vfsx_call *c);
/* Reports the outcome of an allowed call; keeps errno. */
void report_done(struct vfsx_call *c, int ret);
/* Reports a call that already happened (close, fsync); keeps errno. */
void report_after(struct vfsx_call *c, int ret, int err);
/* Samba 4.22+'s mkdir under a temporary name: see vfsx_report.c. */
const char *tmpname_final(const char *path);
void tmp_mkdir_begin(struct vfsx_call *c, const char *tmp, const char *final);
/* Reports the pending mkdir done when path (NULL: any) is its temporary name. */
bool tmp_mkdir_end(const char *path, int ret);
struct vfsx_fsp *fsp_ext(vfs_handle_struct *handle, files_struct *fsp,
			 bool create);
void flags_arg(struct vfsx_msg *m, unsigned flags);
/*
 * The state of fsp when metadata set through it (op "setdosattr" or
 * "utimes") rides on the handle's content report instead of a report of
 * its own; else NULL (report it as usual).
 */
struct vfsx_fsp *meta_rides(vfs_handle_struct *handle, files_struct *fsp,
			    const char *op);
/* Adds what rode on x to its content report m. */
void meta_args(struct vfsx_msg *m, const struct vfsx_fsp *x);
/*
 * Reports what rode on x as setdosattr and utimes reports of their own
 * (the service no longer takes it on a content report), and clears it.
 */
void meta_alone(vfs_handle_struct *handle, files_struct *fsp,
		struct vfsx_fsp *x);
/*
 * Whether DOS attributes set through fsp may join the report of the mkdir
 * or rename that made its name (vfsx_link_amend).
 */
bool attrs_may_amend(vfs_handle_struct *handle, files_struct *fsp);

/* vfsx_hooks_ns.c: names and metadata */
int vfsx_mkdirat(vfs_handle_struct *handle, struct files_struct *dirfsp,
		 const struct smb_filename *smb_fname, mode_t mode);
int vfsx_unlinkat(vfs_handle_struct *handle, struct files_struct *dirfsp,
		  const struct smb_filename *smb_fname, int flags);
#if SMB_VFS_INTERFACE_VERSION >= 50
int vfsx_renameat(vfs_handle_struct *handle, struct files_struct *srcfsp,
		  const struct smb_filename *src, struct files_struct *dstfsp,
		  const struct smb_filename *dst,
		  const struct vfs_rename_how *how);
#else
int vfsx_renameat(vfs_handle_struct *handle, struct files_struct *srcfsp,
		  const struct smb_filename *src, struct files_struct *dstfsp,
		  const struct smb_filename *dst);
#endif
#if SMB_VFS_INTERFACE_VERSION >= 52
int vfsx_rename_stream(vfs_handle_struct *handle,
		       struct files_struct *src_fsp, const char *dst_name,
		       bool replace_if_exists);
#endif
int vfsx_symlinkat(vfs_handle_struct *handle,
		   const struct smb_filename *link_contents,
		   struct files_struct *dirfsp,
		   const struct smb_filename *new_smb_fname);
int vfsx_linkat(vfs_handle_struct *handle, struct files_struct *srcfsp,
		const struct smb_filename *old_smb_fname,
		struct files_struct *dstfsp,
		const struct smb_filename *new_smb_fname, int flags);
int vfsx_mknodat(vfs_handle_struct *handle, struct files_struct *dirfsp,
		 const struct smb_filename *smb_fname, mode_t mode,
		 SMB_DEV_T dev);
int vfsx_fchmod(vfs_handle_struct *handle, files_struct *fsp, mode_t mode);
int vfsx_fchown(vfs_handle_struct *handle, files_struct *fsp, uid_t uid,
		gid_t gid);
int vfsx_lchown(vfs_handle_struct *handle,
		const struct smb_filename *smb_fname, uid_t uid, gid_t gid);
int vfsx_fntimes(vfs_handle_struct *handle, files_struct *fsp,
		 struct smb_file_time *ft);
int vfsx_fchflags(vfs_handle_struct *handle, files_struct *fsp,
		  unsigned int flags);
int vfsx_fsetxattr(vfs_handle_struct *handle, files_struct *fsp,
		   const char *name, const void *value, size_t size, int flags);
int vfsx_fremovexattr(vfs_handle_struct *handle, files_struct *fsp,
		      const char *name);
NTSTATUS vfsx_fset_dos_attributes(vfs_handle_struct *handle,
				  files_struct *fsp, uint32_t dosmode);
NTSTATUS vfsx_fset_nt_acl(vfs_handle_struct *handle, files_struct *fsp,
			  uint32_t security_info_sent,
			  const struct security_descriptor *psd);
int vfsx_sys_acl_set_fd(vfs_handle_struct *handle, files_struct *fsp,
			SMB_ACL_TYPE_T type, SMB_ACL_T theacl);

/* vfsx_hooks_data.c: file content */
int vfsx_close(vfs_handle_struct *handle, files_struct *fsp);
ssize_t vfsx_pwrite(vfs_handle_struct *handle, files_struct *fsp,
		    const void *data, size_t n, off_t offset);
struct tevent_req *vfsx_pwrite_send(vfs_handle_struct *handle,
				    TALLOC_CTX *mem_ctx,
				    struct tevent_context *ev,
				    files_struct *fsp, const void *data,
				    size_t n, off_t offset);
ssize_t vfsx_pwrite_recv(struct tevent_req *req,
			 struct vfs_aio_state *vfs_aio_state);
ssize_t vfsx_recvfile(vfs_handle_struct *handle, int fromfd,
		      files_struct *tofsp, off_t offset, size_t count);
struct tevent_req *vfsx_fsync_send(vfs_handle_struct *handle,
				   TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   files_struct *fsp);
int vfsx_fsync_recv(struct tevent_req *req,
		    struct vfs_aio_state *vfs_aio_state);
int vfsx_ftruncate(vfs_handle_struct *handle, files_struct *fsp,
		   off_t offset);
int vfsx_fallocate(vfs_handle_struct *handle, files_struct *fsp,
		   uint32_t mode, off_t offset, off_t len);
struct tevent_req *vfsx_offload_write_send(vfs_handle_struct *handle,
					   TALLOC_CTX *mem_ctx,
					   struct tevent_context *ev,
					   uint32_t fsctl, DATA_BLOB *token,
					   off_t transfer_offset,
					   files_struct *dest_fsp,
					   off_t dest_off, off_t num);
NTSTATUS vfsx_offload_write_recv(vfs_handle_struct *handle,
				 struct tevent_req *req, off_t *copied);

#endif
