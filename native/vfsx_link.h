/*
 * The per-process link from an smbd to the vfsx service: one Unix stream
 * socket, a bounded wait for each verdict, asynchronous reconnects with
 * capped backoff, and a spool file for whatever could not be delivered.
 */
#ifndef VFSX_LINK_H
#define VFSX_LINK_H

#include "vfsx_msg.h"

struct tevent_context;

/*
 * Once per process (later calls with other values are logged and ignored).
 * Frames sent without waiting go out gather_ms after the first (0: at the
 * end of the event loop turn).
 */
void vfsx_link_setup(struct tevent_context *ev, const char *socket_path,
		     const char *spool_dir, int hello_timeout_ms,
		     int gather_ms);
uint64_t vfsx_link_next_seq(void);
/*
 * Sends a finished frame and waits up to timeout_ms for the answer to seq.
 * Returns 0 with *verdict_err set (0 = transparent), or -errno when the
 * link could not deliver an answer (down, timed out, protocol error).
 * Either way the report is recorded: a copy stays in the ring until the
 * service acknowledges it as durable, and goes to the spool if it cannot.
 */
int vfsx_link_ask(struct vfsx_msg *m, uint64_t seq, int timeout_ms,
		  int *verdict_err);
/*
 * Sends a finished frame without waiting for a verdict. A copy is kept until
 * the service acknowledges it as durable; if the link fails first, the copy
 * goes to the spool. Spools the frame at once while the link is not up.
 */
void vfsx_link_post(struct vfsx_msg *m);
/*
 * Like vfsx_link_post for the async report of an operation about to run:
 * the frame may be held until vfsx_link_fold gives its outcome, and then
 * goes out as one folded frame (report + err=). Returns true when folded;
 * false: the report was already sent, send a "done" frame as before.
 */
void vfsx_link_hold(struct vfsx_msg *m, uint64_t seq, const char *key);
bool vfsx_link_fold(uint64_t seq, int err);
/*
 * A folded report held with a key (the name a mkdir made, a rename's
 * target) stays held until anything else is sent; while it does, the DOS
 * attributes smbd then sets on that name may join it as arg (hex). Returns
 * true when they did (the report is sent then); false: report them alone.
 */
bool vfsx_link_amendable(const char *key);
bool vfsx_link_amend(const char *key, const char *arg, uint64_t val);
bool vfsx_link_up(void);
/* As vfsx_link_up, after reading what the service sent (an EOF: down). */
bool vfsx_link_alive(void);
/* The policy's rules, when the service sent them and the link is up; else NULL (ask). */
const struct vfsx_rules *vfsx_link_rules(void);
/*
 * Before the process goes away: waits (bounded) until every frame sent
 * without a verdict is acknowledged, and spools whatever is not.
 */
void vfsx_link_drain(void);
/* Whether the link is up and its service takes metadata on content reports (hello:4). */
bool vfsx_link_meta_rides(void);
/* Whether the service's policy may deny op (index in vfsx_op_names). */
bool vfsx_link_needs_verdict(int op_index);
/* Appends a finished frame to this process's spool file. */
void vfsx_link_spool(struct vfsx_msg *m);

#endif
