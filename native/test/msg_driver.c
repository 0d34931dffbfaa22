/*
 * Test driver for vfsx_msg.c (no Samba needed). Writes to stdout:
 *   msg_driver bytes            one frame whose names hold every byte value
 *   msg_driver ranges OFF LEN.. the coalesced range list, "off+len;..."
 *   msg_driver reply TEXT       the parse of one reply payload
 *   msg_driver rules OPS OP NAME the module's own verdict from a hello's rules
 */
#include "../vfsx_msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct vfsx_msg m;

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "bytes") == 0) {
		uint8_t all[256], rev[256];
		struct vfsx_ranges rs = { 0 };
		int i;

		for (i = 0; i < 256; i++) {
			all[i] = (uint8_t)i;
			rev[i] = (uint8_t)(255 - i);
		}
		vfsx_ranges_add(&rs, 0, 4096);
		vfsx_ranges_add(&rs, 1 << 20, 10);
		vfsx_msg_begin(&m, "us:er,%=\n", "close", "/srv/sh:are");
		vfsx_msg_arg_u64(&m, "seq", 18446744073709551615ULL);
		vfsx_msg_arg_str(&m, "share", "sh are");
		vfsx_msg_arg_bytes(&m, "path", all, sizeof(all));
		vfsx_msg_arg_bytes(&m, "stream", rev, sizeof(rev));
		vfsx_msg_arg_str(&m, "flags", "ct");
		vfsx_msg_arg_ranges(&m, "ranges", &rs);
		vfsx_msg_arg_u64(&m, "err", 0);
		if (vfsx_msg_end(&m) != 0) {
			return 2;
		}
		fwrite(m.buf, 1, m.len, stdout);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "ranges") == 0) {
		struct vfsx_ranges rs = { 0 };
		unsigned i;
		int a;

		for (a = 2; a + 1 < argc; a += 2) {
			vfsx_ranges_add(&rs, strtoull(argv[a], NULL, 10),
					strtoull(argv[a + 1], NULL, 10));
		}
		for (i = 0; i < rs.n; i++) {
			printf("%s%llu+%llu", i ? ";" : "",
			       (unsigned long long)rs.r[i].off,
			       (unsigned long long)(rs.r[i].end - rs.r[i].off));
		}
		printf("\n");
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "reply") == 0) {
		char kind = 0;
		uint64_t seq = 0;
		int err = 0;
		const uint8_t *ops = NULL;
		size_t ops_len = 0;
		int rc = vfsx_reply_parse((const uint8_t *)argv[2],
					  strlen(argv[2]), &kind, &seq, &err,
					  &ops, &ops_len);

		if (rc != 0) {
			printf("error\n");
		} else if (kind == 'H') {
			printf("%c %llu %d %x\n", kind, (unsigned long long)seq,
			       err, vfsx_ops_mask(ops, ops_len));
		} else {
			printf("%c %llu %d\n", kind, (unsigned long long)seq, err);
		}
		return 0;
	}
	if (argc == 5 && strcmp(argv[1], "rules") == 0) {
		/* rules OPS-FIELD OP NAME: the local verdict (errno, 0 allow, -1 ask) */
		struct vfsx_rules r;
		int rc = vfsx_rules_parse((const uint8_t *)argv[2],
					  strlen(argv[2]), &r);

		if (rc != 0) {
			printf("%s\n", rc > 0 ? "none" : "error");
		} else {
			printf("%d\n", vfsx_rules_check(&r, vfsx_op_index(argv[3]),
							argv[4]));
		}
		return 0;
	}
	return 2;
}
