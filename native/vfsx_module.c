/*
 * vfsx: a transparent Samba VFS module that reports every change a client
 * makes to a share to the vfsx service, and lets the service veto it.
 *
 *   [share]
 *	vfs objects = vfsx
 *	vfsx:socket = /run/vfsx/vfsx.sock
 *	vfsx:timeout = 1000	(ms to wait for a verdict)
 *	vfsx:on_failure = allow	(allow: proceed and spool; deny: fail)
 *	vfsx:spool = /var/spool/vfsx
 *	vfsx:async = yes	(ops no policy rule can deny need no verdict)
 *	vfsx:reuse buffers = yes	(smbd keeps freed I/O buffers: reuse_buffers())
 *
 * Operations that change a name or metadata ask for a verdict before they
 * run and report their outcome ("done") afterwards without waiting. An
 * operation the service's policy cannot deny (it says which in its hello)
 * is reported without waiting; the link keeps a copy until the service
 * acknowledges it as durable, and spools it if the link fails first. Writes
 * cost no round trip: their byte ranges are collected per open file and
 * reported with the next fsync or the close. Only the outermost call of a
 * nest is reported (fset_nt_acl calls fsetxattr, for instance).
 * See docs/protocol.md.
 */
#include "includes.h"
#include "system/filesys.h"
#include "smbd/smbd.h"
#include "auth.h"
#include "lib/global_contexts.h"
#include "vfsx_hooks.h"

#include "version.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#if SMB_VFS_INTERFACE_VERSION < 47
#error "vfsx needs Samba 4.17 (VFS interface 47) or later"
#endif

#define VFSX_STR2(x) #x
#define VFSX_STR(x) VFSX_STR2(x)

/* What this build is for; `vfsx doctor` reads it from the .so and compares it with the running smbd. */
__attribute__((used)) static const char vfsx_build_id[] =
	"vfsx-build: samba=" SAMBA_VERSION_STRING " interface=" VFSX_STR(SMB_VFS_INTERFACE_VERSION);

/*
 * smbd receives each SMB2 write (up to 8 MiB) into a fresh heap buffer, and
 * reads into one, and frees it when the request is done. glibc gives the
 * top of the heap back to the kernel whenever more than twice its (dynamic)
 * mmap threshold lies free there, and the next buffers fault their pages in
 * again: 2,048 faults per 8 MiB, about 14 us each on a VM. Whether the top
 * is free at that moment depends on what else happened to be allocated in
 * between, and any VFS module in the stack changes that (time_audit as much
 * as vfsx): a 256 MiB put through such a share took 17,000-37,000 faults in
 * smbd and ran at 0.6-0.75x of a share without modules (9,000-17,000).
 * Fixed thresholds keep freed buffers for the next requests instead
 * (5,000-7,000 faults, for reads as for writes). An smbd that moved large
 * files then keeps up to 64 MiB of free heap.
 * "vfsx:reuse buffers = no" leaves glibc's defaults, and so does a
 * GLIBC_TUNABLES that sets either threshold itself (the admin's choice).
 */
static void reuse_buffers(int snum)
{
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
	static bool done;
	const char *t = getenv("GLIBC_TUNABLES");

	if (done || !lp_parm_bool(snum, "vfsx", "reuse buffers", true)) {
		return;
	}
	done = true;
	if (t != NULL && (strstr(t, "mmap_threshold") != NULL ||
			  strstr(t, "trim_threshold") != NULL)) {
		return;
	}
	/* 32 MiB is the largest mmap threshold glibc accepts on 64-bit. */
	if (mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) != 1 ||
	    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024) != 1) {
		DBG_NOTICE("vfsx: could not set malloc thresholds\n");
	}
#endif
}

/* Connect and disconnect */

static int vfsx_connect(vfs_handle_struct *handle, const char *service,
			const char *user)
{
	struct vfsx_share *sh = NULL;
	const char *on_failure = NULL;
	int snum = SNUM(handle->conn);
	int ret;

	ret = SMB_VFS_NEXT_CONNECT(handle, service, user);
	if (ret < 0) {
		return ret;
	}
	sh = talloc_zero(handle->conn, struct vfsx_share);
	if (sh == NULL) {
		SMB_VFS_NEXT_DISCONNECT(handle);
		errno = ENOMEM;
		return -1;
	}
	sh->share = talloc_strdup(sh, service);
	sh->origpath = talloc_strdup(sh, handle->conn->connectpath);
	sh->user = talloc_strdup(sh,
		handle->conn->session_info->unix_info->unix_name);
	sh->timeout_ms = lp_parm_int(snum, "vfsx", "timeout", 1000);
	if (sh->timeout_ms < 1) {
		sh->timeout_ms = 1;
	}
	on_failure = lp_parm_const_string(snum, "vfsx", "on_failure", "allow");
	sh->deny = strequal(on_failure, "deny");
	sh->deny_errno = EACCES;
	sh->async = lp_parm_bool(snum, "vfsx", "async", true);
	sh->strict = lp_parm_bool(snum, "vfsx", "strict", false);
	sh->meta_rides = lp_parm_bool(snum, "vfsx", "fold metadata", true);
	if (sh->share == NULL || sh->origpath == NULL || sh->user == NULL) {
		TALLOC_FREE(sh);
		SMB_VFS_NEXT_DISCONNECT(handle);
		errno = ENOMEM;
		return -1;
	}
	SMB_VFS_HANDLE_SET_DATA(handle, sh, NULL, struct vfsx_share,
				return -1);
	reuse_buffers(snum);
	vfsx_link_setup(global_event_context(),
			lp_parm_const_string(snum, "vfsx", "socket",
					     "/run/vfsx/vfsx.sock"),
			lp_parm_const_string(snum, "vfsx", "spool",
					     "/var/spool/vfsx"),
			sh->timeout_ms,
			lp_parm_int(snum, "vfsx", "gather ms", 50));
	DBG_INFO("vfsx: connected share=%s path=%s user=%s on_failure=%s\n",
		 sh->share, sh->origpath, sh->user, on_failure);
	return 0;
}

/*
 * A tree disconnect (also at the end of a session, before smbd exits): make
 * sure nothing reported without a verdict is lost with the process.
 */
static void vfsx_disconnect(vfs_handle_struct *handle)
{
	tmp_mkdir_end(NULL, 0);
	vfsx_link_drain();
	SMB_VFS_NEXT_DISCONNECT(handle);
}

/* Opens that create or truncate */

static int vfsx_openat(vfs_handle_struct *handle,
		       const struct files_struct *dirfsp,
		       const struct smb_filename *smb_fname,
		       struct files_struct *fsp,
		       const struct vfs_open_how *how)
{
	struct vfsx_call c = { 0 };
	struct vfsx_msg *m = NULL;
	struct vfsx_fsp *x = NULL;
	bool created;
	char fl[4];
	int n = 0, err, ret;

	/*
	 * smbd looked the name up before opening: a valid stat means the file
	 * exists, and O_CREAT without O_TRUNC changes nothing then.
	 */
	created = (how->flags & O_CREAT) &&
		  ((how->flags & O_EXCL) || !VALID_STAT(fsp->fsp_name->st));
	if (!created && !(how->flags & O_TRUNC)) {
		return SMB_VFS_NEXT_OPENAT(handle, dirfsp, smb_fname, fsp, how);
	}
	m = report_begin(handle, &c, "create", fsp->fsp_name);
	if (m != NULL) {
		if (created) {
			fl[n++] = 'c';
		}
		if (how->flags & O_TRUNC) {
			fl[n++] = 't';
		}
		if (how->flags & O_EXCL) {
			fl[n++] = 'x';
		}
		fl[n] = '\0';
		vfsx_msg_arg_str(m, "flags", fl);
		vfsx_msg_arg_oct(m, "mode", how->mode);
	}
	err = report_ask(&c);
	if (err != 0) {
		errno = err;
		return -1;
	}
	g_depth++;
	ret = SMB_VFS_NEXT_OPENAT(handle, dirfsp, smb_fname, fsp, how);
	g_depth--;
	if (ret >= 0) {
		x = fsp_ext(handle, fsp, true);
		if (x != NULL) {
			x->flags |= created ? F_CREATED : 0;
			x->flags |= (how->flags & O_TRUNC) ? F_TRUNCATED : 0;
		}
	}
	report_done(&c, ret);
	return ret;
}

static struct vfs_fn_pointers vfsx_fns = {
	.connect_fn = vfsx_connect,
	.disconnect_fn = vfsx_disconnect,
	.openat_fn = vfsx_openat,
	.close_fn = vfsx_close,
	.pwrite_fn = vfsx_pwrite,
	.pwrite_send_fn = vfsx_pwrite_send,
	.pwrite_recv_fn = vfsx_pwrite_recv,
	.recvfile_fn = vfsx_recvfile,
	.fsync_send_fn = vfsx_fsync_send,
	.fsync_recv_fn = vfsx_fsync_recv,
	.ftruncate_fn = vfsx_ftruncate,
	.fallocate_fn = vfsx_fallocate,
	.offload_write_send_fn = vfsx_offload_write_send,
	.offload_write_recv_fn = vfsx_offload_write_recv,
	.mkdirat_fn = vfsx_mkdirat,
	.unlinkat_fn = vfsx_unlinkat,
	.renameat_fn = vfsx_renameat,
#if SMB_VFS_INTERFACE_VERSION >= 52
	.rename_stream_fn = vfsx_rename_stream,
#endif
	.symlinkat_fn = vfsx_symlinkat,
	.linkat_fn = vfsx_linkat,
	.mknodat_fn = vfsx_mknodat,
	.fchmod_fn = vfsx_fchmod,
	.fchown_fn = vfsx_fchown,
	.lchown_fn = vfsx_lchown,
	.fntimes_fn = vfsx_fntimes,
	.fchflags_fn = vfsx_fchflags,
	.fsetxattr_fn = vfsx_fsetxattr,
	.fremovexattr_fn = vfsx_fremovexattr,
	.fset_dos_attributes_fn = vfsx_fset_dos_attributes,
	.fset_nt_acl_fn = vfsx_fset_nt_acl,
	.sys_acl_set_fd_fn = vfsx_sys_acl_set_fd,
};

NTSTATUS samba_init_module(TALLOC_CTX *ctx);
_PUBLIC_ NTSTATUS samba_init_module(TALLOC_CTX *ctx)
{
	return smb_register_vfs(SMB_VFS_INTERFACE_VERSION, "vfsx", &vfsx_fns);
}
