//! Which arguments of a Redis command are keys (for `faults[].key`), from
//! the key positions Redis's `COMMAND INFO` gives (first key, last key,
//! step); commands absent here take their first argument as the key.

/// Where a command's keys are, counting the command name as argument 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// No key: a fault on the command applies whatever the arguments.
    None,
    /// Argument 2 only (the default).
    First,
    /// Every argument from 2 on (`MGET`, `DEL`, ...).
    All,
    /// Every other argument from 2 on (`MSET k v k v`).
    EveryOther,
    /// Every argument but the last (`BLPOP k1 k2 timeout`).
    AllButLast,
    /// Arguments 2 and 3 (`RENAME`, `LMOVE`, ...).
    FirstTwo,
    /// Every argument from 3 on (`BITOP op dest k...`).
    FromThird,
    /// Argument 3 only.
    Third,
    /// Argument 4 only (`MIGRATE host port key`).
    Fourth,
}

impl Keys {
    /// The key positions of `cmd` (lower case).
    pub fn of(cmd: &str) -> Keys {
        match cmd {
            "acl" | "asking" | "auth" | "bgrewriteaof" | "bgsave" | "blmpop" | "bzmpop"
            | "client" | "cluster" | "command" | "config" | "dbsize" | "debug" | "discard"
            | "echo" | "eval" | "eval_ro" | "evalsha" | "evalsha_ro" | "exec" | "failover"
            | "fcall" | "fcall_ro" | "flushall" | "flushdb" | "function" | "hello" | "info"
            | "keys" | "lastsave" | "latency" | "lmpop" | "lolwut" | "memory" | "module"
            | "monitor" | "multi" | "object" | "pfselftest" | "ping" | "psubscribe" | "psync"
            | "publish" | "pubsub" | "punsubscribe" | "quit" | "randomkey" | "readonly"
            | "readwrite" | "replconf" | "replicaof" | "reset" | "role" | "save" | "scan"
            | "script" | "select" | "shutdown" | "sintercard" | "slaveof" | "slowlog"
            | "subscribe" | "swapdb" | "sync" | "time" | "unsubscribe" | "unwatch" | "wait"
            | "xgroup" | "xinfo" | "xread" | "xreadgroup" | "zdiff" | "zinter" | "zintercard"
            | "zmpop" | "zunion" => Keys::None,
            "del" | "exists" | "mget" | "pfcount" | "pfmerge" | "sdiff" | "sdiffstore"
            | "sinter" | "sinterstore" | "ssubscribe" | "sunion" | "sunionstore"
            | "sunsubscribe" | "touch" | "unlink" | "watch" => Keys::All,
            "mset" | "msetnx" => Keys::EveryOther,
            "blpop" | "brpop" | "bzpopmax" | "bzpopmin" => Keys::AllButLast,
            "blmove" | "brpoplpush" | "copy" | "geosearchstore" | "lcs" | "lmove" | "rename"
            | "renamenx" | "rpoplpush" | "smove" | "zrangestore" => Keys::FirstTwo,
            "bitop" => Keys::FromThird,
            "pfdebug" => Keys::Third,
            "migrate" => Keys::Fourth,
            _ => Keys::First,
        }
    }

    /// Whether argument `idx` (1-based, the command being 1) of `narg` is a key.
    pub fn is_key(self, idx: usize, narg: usize) -> bool {
        match self {
            Keys::None => false,
            Keys::First => idx == 2,
            Keys::All => idx >= 2,
            Keys::EveryOther => idx >= 2 && idx.is_multiple_of(2),
            Keys::AllButLast => idx >= 2 && idx < narg,
            Keys::FirstTwo => idx == 2 || idx == 3,
            Keys::FromThird => idx >= 3,
            Keys::Third => idx == 3,
            Keys::Fourth => idx == 4,
        }
    }
}
