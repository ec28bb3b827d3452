//! Webhooks and their cursors in the sled tree: the disk records (a
//! version byte, then JSON) and the store's methods for them.
//!
//! Keys (`keys`): `W` webhook-id → record; `C` webhook-id `0x00`
//! resource-id → cursor. Ids never contain `0x00`, so one webhook's cursors
//! are exactly the keys under `C` id `0x00`. A data dir written before
//! webhooks existed has neither tag and reads unchanged: the format version
//! stays 2, and an older patchfeed, which scans only its own tags, ignores
//! these keys.
//!
//! Every write is made durable by the group commit (`commit`) before it
//! returns; concurrent cursor writes share one flush.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::{corrupt, keys, Store, StoreError};
use crate::model::{
    Cursor, EventId, Point, ResourceId, Resources, Start, WebhookRecord, WebhookSpec,
};

const WEBHOOK_V1: u8 = 1;
const CURSOR_V1: u8 = 1;

#[derive(Serialize, Deserialize)]
struct DiskWebhook {
    id: String,
    url: String,
    /// `None`: every resource.
    resources: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// `"fresh"`, `"now"`, or `"since"` with `since_id` / `since_ms`.
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_ms: Option<u64>,
    coalesce: bool,
    headers: BTreeMap<String, String>,
    secret: String,
    created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disabled: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct DiskCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay_ms: Option<u64>,
}

fn point_parts(p: Point) -> (Option<String>, Option<u64>) {
    match p {
        Point::Id(u) => (Some(u.to_string()), None),
        Point::Time(ms) => (None, Some(ms)),
    }
}

fn point_of(id: Option<&str>, ms: Option<u64>) -> Option<Point> {
    match (id, ms) {
        (Some(s), None) => Ulid::from_string(s).ok().map(Point::Id),
        (None, Some(ms)) => Some(Point::Time(ms)),
        _ => None,
    }
}

pub(crate) fn encode_webhook(r: &WebhookRecord) -> Vec<u8> {
    let s = &r.spec;
    let (from, since_id, since_ms) = match s.from {
        Start::Fresh => ("fresh", None, None),
        Start::Now => ("now", None, None),
        Start::Since(p) => {
            let (i, m) = point_parts(p);
            ("since", i, m)
        }
    };
    let d = DiskWebhook {
        id: s.id.as_str().to_owned(),
        url: s.url.clone(),
        resources: match &s.resources {
            Resources::All => None,
            Resources::List(l) => Some(l.iter().map(|r| r.as_str().to_owned()).collect()),
        },
        path: s.path.clone(),
        from: from.to_owned(),
        since_id,
        since_ms,
        coalesce: s.coalesce,
        headers: s.headers.clone(),
        secret: s.secret.clone(),
        created_ms: r.created_ms,
        disabled: r.disabled.clone(),
    };
    let mut out = vec![WEBHOOK_V1];
    // A struct of strings, integers and maps of strings always serializes.
    serde_json::to_writer(&mut out, &d).expect("DiskWebhook serializes");
    out
}

pub(crate) fn decode_webhook(v: &[u8]) -> Option<WebhookRecord> {
    let (&ver, body) = v.split_first()?;
    if ver != WEBHOOK_V1 {
        return None;
    }
    let d: DiskWebhook = serde_json::from_slice(body).ok()?;
    let from = match d.from.as_str() {
        "fresh" => Start::Fresh,
        "now" => Start::Now,
        "since" => Start::Since(point_of(d.since_id.as_deref(), d.since_ms)?),
        _ => return None,
    };
    let resources = match d.resources {
        None => Resources::All,
        Some(l) => Resources::List(
            l.iter()
                .map(|r| ResourceId::new(r).ok())
                .collect::<Option<Vec<_>>>()?,
        ),
    };
    Some(WebhookRecord {
        spec: WebhookSpec {
            id: ResourceId::new(&d.id).ok()?,
            url: d.url,
            resources,
            path: d.path,
            from,
            coalesce: d.coalesce,
            headers: d.headers,
            secret: d.secret,
        },
        created_ms: d.created_ms,
        disabled: d.disabled,
    })
}

pub(crate) fn encode_cursor(c: Cursor) -> Vec<u8> {
    let d = match c {
        Cursor::Acked(e) => DiskCursor {
            acked: Some(e.0.to_string()),
            replay_id: None,
            replay_ms: None,
        },
        Cursor::Replay(p) => {
            let (replay_id, replay_ms) = point_parts(p);
            DiskCursor {
                acked: None,
                replay_id,
                replay_ms,
            }
        }
    };
    let mut out = vec![CURSOR_V1];
    serde_json::to_writer(&mut out, &d).expect("DiskCursor serializes");
    out
}

pub(crate) fn decode_cursor(v: &[u8]) -> Option<Cursor> {
    let (&ver, body) = v.split_first()?;
    if ver != CURSOR_V1 {
        return None;
    }
    let d: DiskCursor = serde_json::from_slice(body).ok()?;
    match d.acked {
        Some(a) => Some(Cursor::Acked(EventId(Ulid::from_string(&a).ok()?))),
        None => point_of(d.replay_id.as_deref(), d.replay_ms).map(Cursor::Replay),
    }
}

impl Store {
    /// Creates or replaces a webhook's record; durable before return.
    pub async fn put_webhook(&self, record: &WebhookRecord) -> Result<(), StoreError> {
        let v = encode_webhook(record);
        let len = v.len();
        self.inner
            .tree
            .insert(keys::webhook(&record.spec.id), v)
            .map_err(|e| StoreError::from(self.inner.health.failed(e)))?;
        self.inner
            .commit
            .wrote(len)
            .await
            .map_err(StoreError::Flush)?;
        self.flush().await
    }

    /// Removes a webhook and all its cursors; false if there was none.
    /// Durable before return.
    pub async fn delete_webhook(&self, id: &ResourceId) -> Result<bool, StoreError> {
        let tree = &self.inner.tree;
        let existed = tree.remove(keys::webhook(id))?.is_some();
        let prefix = keys::cursor_prefix(id);
        for k in tree.scan_prefix(&prefix).keys() {
            tree.remove(k?)?;
            self.inner.commit.wrote_blocking(tree, 64)?;
        }
        self.flush().await?;
        Ok(existed)
    }

    /// Every webhook whose record reads, ordered by id; an unreadable one is
    /// logged and skipped (kept on disk).
    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.tree.scan_prefix([keys::WEBHOOK]) {
            let (k, v) = kv?;
            match decode_webhook(&v) {
                Some(r) => out.push(r),
                None => {
                    tracing::error!(key = %keys::display(&k), "a stored webhook cannot be decoded; skipped (kept on disk)")
                }
            }
        }
        Ok(out)
    }

    /// The cursors of webhook `id`, by resource.
    pub fn cursors(&self, id: &ResourceId) -> Result<BTreeMap<ResourceId, Cursor>, StoreError> {
        let prefix = keys::cursor_prefix(id);
        let mut out = BTreeMap::new();
        for kv in self.inner.tree.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let resource = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|s| ResourceId::new(s).ok())
                .ok_or_else(|| corrupt(&k))?;
            out.insert(resource, decode_cursor(&v).ok_or_else(|| corrupt(&k))?);
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) the cursor of `webhook` in
    /// `resource`; durable before return (group commit).
    pub async fn set_cursor(
        &self,
        webhook: &ResourceId,
        resource: &ResourceId,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        let key = keys::cursor(webhook, resource);
        let written = match cursor {
            Some(c) => {
                let v = encode_cursor(c);
                let len = v.len();
                self.inner
                    .tree
                    .insert(key, v)
                    .map_err(|e| StoreError::from(self.inner.health.failed(e)))?;
                len
            }
            None => {
                self.inner.tree.remove(key)?;
                64
            }
        };
        self.inner
            .commit
            .wrote(written)
            .await
            .map_err(StoreError::Flush)?;
        self.flush().await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(from: Start, resources: Resources) -> WebhookRecord {
        WebhookRecord {
            spec: WebhookSpec {
                id: ResourceId::new("w.1").unwrap(),
                url: "http://127.0.0.1:9/hook".into(),
                resources,
                path: Some("/a/b".into()),
                from,
                coalesce: true,
                headers: BTreeMap::from([("X-A".into(), "1".into())]),
                secret: "whsec_AAAA".into(),
            },
            created_ms: 7,
            disabled: Some("gone".into()),
        }
    }

    #[test]
    fn webhook_records_and_cursors_round_trip() {
        let u = Ulid::from_parts(1_700_000_000_000, 5);
        for from in [
            Start::Fresh,
            Start::Now,
            Start::Since(Point::Id(u)),
            Start::Since(Point::Time(12)),
        ] {
            for res in [
                Resources::All,
                Resources::List(vec![ResourceId::new("a").unwrap()]),
            ] {
                let r = record(from, res);
                assert_eq!(decode_webhook(&encode_webhook(&r)), Some(r));
            }
        }
        for c in [
            Cursor::Acked(EventId(u)),
            Cursor::Replay(Point::Id(u)),
            Cursor::Replay(Point::Time(3)),
        ] {
            assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
        }
        assert_eq!(decode_cursor(&[9, b'{', b'}']), None);
        assert_eq!(decode_webhook(&[1, b'x']), None);
    }

    #[tokio::test]
    async fn webhooks_and_cursors_survive_a_reopen_and_delete_takes_the_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        check_webhook_storage(&mut || {
            let path = path.clone();
            Box::pin(async move { crate::store::open_sled(&path).unwrap() })
        })
        .await;
    }

    /// Webhook records and cursors through the `Storage` trait, across a
    /// reopen (`open` opens the same store again; the previous handle is
    /// dropped first). Every backend runs it.
    pub(crate) async fn check_webhook_storage(
        open: &mut dyn FnMut() -> futures_util::future::BoxFuture<'static, crate::store::Store>,
    ) {
        let a = ResourceId::new("a").unwrap();
        let b = ResourceId::new("b").unwrap();
        let r = record(Start::Fresh, Resources::All);
        let w = r.spec.id.clone();
        let other = ResourceId::new("w.10").unwrap();
        let e = EventId(Ulid::from_parts(5, 5));
        {
            let s = open().await;
            s.put_webhook(&r).await.unwrap();
            s.set_cursor(&w, &a, Some(Cursor::Acked(e))).await.unwrap();
            s.set_cursor(&w, &b, Some(Cursor::Replay(Point::Time(1))))
                .await
                .unwrap();
            s.set_cursor(&other, &a, Some(Cursor::Acked(e)))
                .await
                .unwrap();
        }
        let s = open().await;
        assert_eq!(s.webhooks().unwrap(), vec![r]);
        let c = s.cursors(&w).unwrap();
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[&a], Cursor::Acked(e));
        s.set_cursor(&w, &b, None).await.unwrap();
        assert_eq!(s.cursors(&w).unwrap().len(), 1);
        assert!(s.delete_webhook(&w).await.unwrap());
        assert!(!s.delete_webhook(&w).await.unwrap());
        assert!(s.cursors(&w).unwrap().is_empty());
        // Another webhook whose id starts with this one's keeps its own.
        assert_eq!(s.cursors(&other).unwrap().len(), 1);
        assert!(s.resources().is_empty());
        drop(s);
        // The deletes are durable too.
        let s = open().await;
        assert!(s.webhooks().unwrap().is_empty());
        assert!(s.cursors(&w).unwrap().is_empty());
        assert_eq!(s.cursors(&other).unwrap().len(), 1);
    }
}
