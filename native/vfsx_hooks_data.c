/*
 * vfsx hooks for file content. Writes only extend the file's list of dirty
 * byte ranges; close and fsync report the list and wait (bounded) until
 * the service has recorded it, so an acknowledged close is never lost.
 */
#include "includes.h"
#include "system/filesys.h"
#include "smbd/smbd.h"
#include "vfsx_hooks.h"

static void note_write(vfs_handle_struct *handle, files_struct *fsp,
		       off_t offset, uint64_t n)
{
	struct vfsx_fsp *x = fsp_ext(handle, fsp, true);

	if (x == NULL) {
		return;
	}
#ifdef VFS_PWRITE_APPEND_OFFSET
	if (offset == VFS_PWRITE_APPEND_OFFSET) {
		x->flags |= F_APPEND;
		return;
	}
#endif
	if (offset < 0) {
		x->flags |= F_APPEND;
		return;
	}
	vfsx_ranges_add(&x->ranges, (uint64_t)offset, n);
}

/*
 * Starts the report of what changed in fsp (op "close" or "fsync") and
 * clears the file's state. NULL when there is nothing to report.
 */
static struct vfsx_msg *begin_content(vfs_handle_struct *handle,
				      struct vfsx_call *c, const char *op,
				      files_struct *fsp)
{
	struct vfsx_fsp *x = fsp_ext(handle, fsp, false);
	struct vfsx_msg *m = NULL;
	int depth = g_depth;

	if (x == NULL || (x->flags == 0 && x->ranges.n == 0)) {
		*c = (struct vfsx_call){ 0 };
		return NULL;
	}
	g_depth = 0;	/* content changes are reported even when nested */
	if (x->meta != 0 && !vfsx_link_meta_rides()) {
		meta_alone(handle, fsp, x);
	}
	m = report_begin(handle, c, op, fsp->fsp_name);
	g_depth = depth;
	if (m != NULL) {
		flags_arg(m, x->flags);
		vfsx_msg_arg_ranges(m, "ranges", &x->ranges);
		/*
		 * The file the ranges were written to: by the time the report
		 * is replicated the name may hold another file (an Office save
		 * renames a new one over it), whose other blocks the ranges
		 * say nothing about.
		 */
		if (VALID_STAT(fsp->fsp_name->st)) {
			vfsx_msg_arg_hex(m, "ino",
					 (uint64_t)fsp->fsp_name->st.st_ex_ino);
		}
		meta_args(m, x);
		*x = (struct vfsx_fsp){ 0 };
	}
	return m;
}

int vfsx_close(vfs_handle_struct *handle, files_struct *fsp)
{
	struct vfsx_call c;
	struct vfsx_msg *m = begin_content(handle, &c, "close", fsp);
	int ret;

	ret = SMB_VFS_NEXT_CLOSE(handle, fsp);
	if (m != NULL) {
		report_after(&c, ret, errno);
	}
	return ret;
}

ssize_t vfsx_pwrite(vfs_handle_struct *handle, files_struct *fsp,
		    const void *data, size_t n, off_t offset)
{
	note_write(handle, fsp, offset, n);
	return SMB_VFS_NEXT_PWRITE(handle, fsp, data, n, offset);
}

struct tevent_req *vfsx_pwrite_send(vfs_handle_struct *handle,
				    TALLOC_CTX *mem_ctx,
				    struct tevent_context *ev,
				    files_struct *fsp, const void *data,
				    size_t n, off_t offset)
{
	note_write(handle, fsp, offset, n);
	return SMB_VFS_NEXT_PWRITE_SEND(mem_ctx, ev, handle, fsp, data, n,
					offset);
}

ssize_t vfsx_pwrite_recv(struct tevent_req *req,
			 struct vfs_aio_state *vfs_aio_state)
{
	return SMB_VFS_PWRITE_RECV(req, vfs_aio_state);
}

ssize_t vfsx_recvfile(vfs_handle_struct *handle, int fromfd,
		      files_struct *tofsp, off_t offset, size_t count)
{
	note_write(handle, tofsp, offset, count);
	return SMB_VFS_NEXT_RECVFILE(handle, fromfd, tofsp, offset, count);
}

struct vfsx_fsync_state {
	vfs_handle_struct *handle;
	files_struct *fsp;
	int ret;
	struct vfs_aio_state aio_state;
};

static void vfsx_fsync_done(struct tevent_req *subreq);

struct tevent_req *vfsx_fsync_send(vfs_handle_struct *handle,
				   TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   files_struct *fsp)
{
	struct tevent_req *req = NULL, *subreq = NULL;
	struct vfsx_fsync_state *state = NULL;

	req = tevent_req_create(mem_ctx, &state, struct vfsx_fsync_state);
	if (req == NULL) {
		return NULL;
	}
	state->handle = handle;
	state->fsp = fsp;
	subreq = SMB_VFS_NEXT_FSYNC_SEND(state, ev, handle, fsp);
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, vfsx_fsync_done, req);
	return req;
}

static void vfsx_fsync_done(struct tevent_req *subreq)
{
	struct tevent_req *req =
		tevent_req_callback_data(subreq, struct tevent_req);
	struct vfsx_fsync_state *state =
		tevent_req_data(req, struct vfsx_fsync_state);

	state->ret = SMB_VFS_FSYNC_RECV(subreq, &state->aio_state);
	TALLOC_FREE(subreq);
	tevent_req_done(req);
}

int vfsx_fsync_recv(struct tevent_req *req,
		    struct vfs_aio_state *vfs_aio_state)
{
	struct vfsx_fsync_state *state =
		tevent_req_data(req, struct vfsx_fsync_state);
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	enum tevent_req_state st;
	uint64_t e = 0;

	/* tevent_req_is_unix_error() is not exported to modules */
	if (tevent_req_is_error(req, &st, &e)) {
		vfs_aio_state->error =
			st == TEVENT_REQ_USER_ERROR ? (int)e : ENOMEM;
		tevent_req_received(req);
		return -1;
	}
	*vfs_aio_state = state->aio_state;
	m = begin_content(state->handle, &c, "fsync", state->fsp);
	if (m != NULL) {
		report_after(&c, state->ret, state->aio_state.error);
	}
	tevent_req_received(req);
	return state->ret;
}

int vfsx_ftruncate(vfs_handle_struct *handle, files_struct *fsp,
		   off_t offset)
{
	struct vfsx_call c;
	struct vfsx_msg *m = NULL;
	int ret, err;

	m = report_begin(handle, &c, "truncate", fsp->fsp_name);
	if (m != NULL) {
		vfsx_msg_arg_i64(m, "size", offset);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_FTRUNCATE(handle, fsp, offset);
	g_depth--;
	report_done(&c, ret);
	return ret;
}

int vfsx_fallocate(vfs_handle_struct *handle, files_struct *fsp,
		   uint32_t mode, off_t offset, off_t len)
{
	if (offset >= 0 && len > 0) {
		note_write(handle, fsp, offset, (uint64_t)len);
	}
	return SMB_VFS_NEXT_FALLOCATE(handle, fsp, mode, offset, len);
}

struct tevent_req *vfsx_offload_write_send(vfs_handle_struct *handle,
					   TALLOC_CTX *mem_ctx,
					   struct tevent_context *ev,
					   uint32_t fsctl, DATA_BLOB *token,
					   off_t transfer_offset,
					   files_struct *dest_fsp,
					   off_t dest_off, off_t num)
{
	if (dest_off >= 0 && num > 0) {
		note_write(handle, dest_fsp, dest_off, (uint64_t)num);
	}
	return SMB_VFS_NEXT_OFFLOAD_WRITE_SEND(handle, mem_ctx, ev, fsctl,
					       token, transfer_offset,
					       dest_fsp, dest_off, num);
}

NTSTATUS vfsx_offload_write_recv(vfs_handle_struct *handle,
				 struct tevent_req *req, off_t *copied)
{
	return SMB_VFS_NEXT_OFFLOAD_WRITE_RECV(handle, req, copied);
}
