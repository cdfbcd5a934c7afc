//! Which node serves a key or a sharded channel: the Redis Cluster key slot (CRC16 of the hash tag,
//! mod 16384) and the slot map from `CLUSTER SLOTS`. Used by the sharded subscriber, which places each
//! channel on its slot's master itself (see `sharded.rs`).

use redis::Value;

/// Number of slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of a key or sharded channel: only the hash tag (`{…}`, first `{` to the next `}`, if not
/// empty) is hashed, as Redis does.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A node's address as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Slot ranges and the master serving each, plus every node named (masters and replicas).
#[derive(Debug, Clone, Default)]
pub struct SlotMap {
    ranges: Vec<(u16, u16, NodeAddr)>,
    pub nodes: Vec<NodeAddr>,
}

impl SlotMap {
    /// A map with one node serving every slot (a single Redis).
    pub fn single(node: NodeAddr) -> SlotMap {
        SlotMap {
            ranges: vec![(0, SLOTS - 1, node.clone())],
            nodes: vec![node],
        }
    }

    /// The master of `slot`, if any serves it.
    pub fn master(&self, slot: u16) -> Option<&NodeAddr> {
        self.ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, node)| node)
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …] (master), [replica…]…]…]`.
    /// `fallback_host` replaces an empty host (a node that does not know its own address).
    pub fn parse(reply: &Value, fallback_host: &str) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut map = SlotMap::default();
        for range in ranges {
            let Value::Array(items) = range else {
                return None;
            };
            let int = |v: &Value| match v {
                Value::Int(i) => u16::try_from(*i).ok(),
                _ => None,
            };
            let (start, end) = (int(items.first()?)?, int(items.get(1)?)?);
            let mut nodes = items[2..].iter().filter_map(|n| node_of(n, fallback_host));
            let master = nodes.next()?;
            map.nodes.push(master.clone());
            map.nodes.extend(nodes);
            map.ranges.push((start, end, master));
        }
        map.nodes.sort();
        map.nodes.dedup();
        Some(map)
    }
}

fn node_of(v: &Value, fallback_host: &str) -> Option<NodeAddr> {
    let Value::Array(parts) = v else {
        return None;
    };
    let host = match parts.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let port = match parts.get(1)? {
        Value::Int(p) => u16::try_from(*p).ok()?,
        _ => return None,
    };
    let host = if host.is_empty() || host == "?" {
        fallback_host.to_owned()
    } else {
        host
    };
    Some(NodeAddr { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"c2s:{e:abc}:live"), 8991);
        assert_eq!(key_slot(b"e:abc"), 8991);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{}foo"), key_slot(b"{}foo"));
        assert_eq!(key_slot(b"a{}b"), crc16_xmodem(b"a{}b") % SLOTS);
    }
}
