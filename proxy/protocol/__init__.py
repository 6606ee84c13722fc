"""Sans-I/O PostgreSQL protocol 3.0: framing, message codec, startup, authentication.

No sockets and no asyncio here: callers feed bytes in and get messages or
bytes to send out. Modules: `codes` (type bytes and request codes), `framing`
(MessageReader, StartupReader, ReplyScanner), `startup` (startup-phase
messages), `messages` (builders and decoders), `auth` (SCRAM/md5/cleartext,
both sides). Import the submodule you need; nothing is re-exported here.
"""
