#!/usr/bin/python3
"""Renames through SMB2 SetInfo(FileRenameInformation) as Windows does, which
smbclient and libsmbclient cannot do for streams: a target of ":new" renames
the stream "file:old" to "file:new". Uses impacket (python3-impacket).
Usage: smb_rename.py PORT SHARE USER PASS SOURCE TARGET
"""
import sys

from impacket.smbconnection import SMBConnection

port, share, user, password, source, target = sys.argv[1:7]
conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=int(port))
try:
    conn.login(user, password)
    conn.rename(share, source, target)
except Exception as e:  # impacket raises SessionError with the NT status
    sys.exit("rename %s -> %s: %s" % (source, target, e))
finally:
    conn.close()
