//! The job queue: one stream (`<prefix>:{jobs}`, one slot) read by the consumer group `workers`, so a job
//! enqueued while no worker listens waits for one; acknowledged (and deleted) once its terminal event is
//! published. A job delivered to a worker that dies stays pending and is reclaimed (`XAUTOCLAIM`) by
//! another once idle for `C2S_JOB_CLAIM_IDLE_MS`; running jobs are kept fresh (`XCLAIM … JUSTID`).
//!
//! One stream rather than partitions: a query costs the queue's shard 4–5 commands (XADD, XREADGROUP,
//! XACK, XDEL, plus its share of the janitor's XAUTOCLAIM/XCLAIM/XLEN), against hundreds of event writes
//! on its execution's shard, so the queue is not what fills a shard (figures in bench/README.md), and a
//! worker's blocking `XREADGROUP` can only wait on keys of one slot: partitions would need one blocking
//! connection per partition per worker.

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::Value;

use super::conn::Conn;
use super::replies::field_bytes;
use super::RedisBus;
use crate::bus::{BusError, Delivery, Job};
use crate::keys::WORKER_GROUP;

impl RedisBus {
    pub(super) async fn ensure_group(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        // Start at 0, not $: jobs enqueued before the first worker ever started must still run.
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// The connection for blocking reads, made on first use and after a failure.
    async fn blocking_conn(&self, block: Duration) -> Result<Conn, BusError> {
        let mut slot = self.blocking.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.endpoints.blocking(block).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    pub(super) async fn next_job(
        &self,
        consumer: &str,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        let mut conn = self.blocking_conn(block).await?;
        let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKER_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.jobs())
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = match read {
            Ok(r) => r,
            Err(e) => {
                // Drop the connection so the next call makes a fresh one; recreate the group if Redis lost it.
                *self.blocking.lock().await = None;
                if e.code() == Some("NOGROUP") {
                    self.ensure_group().await?;
                }
                return Err(e.into());
            }
        };
        let Some(entry) = reply
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next())
        else {
            return Ok(None);
        };
        let job = field_bytes(&entry.map, "job")
            .ok_or_else(|| BusError::Malformed("job entry without `job` field".into()))
            .and_then(|b| {
                serde_json::from_slice::<Job>(b).map_err(|e| BusError::Malformed(e.to_string()))
            });
        match job {
            Ok(job) => Ok(Some(Delivery {
                delivery_id: entry.id,
                job,
            })),
            Err(e) => {
                // A job nobody can read would be redelivered forever: drop it, loudly.
                tracing::error!(id = %entry.id, error = %e, "dropping malformed job");
                self.ack_job(&Delivery {
                    delivery_id: entry.id,
                    job: Job::default(),
                })
                .await?;
                Ok(None)
            }
        }
    }

    pub(super) async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("XACK")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg(&delivery.delivery_id)
            .ignore()
            .cmd("XDEL")
            .arg(self.keys.jobs())
            .arg(&delivery.delivery_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn reclaim_jobs(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut conn = self.conn.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await?;
        let mut jobs = Vec::new();
        for entry in reply.claimed {
            let job =
                field_bytes(&entry.map, "job").and_then(|b| serde_json::from_slice::<Job>(b).ok());
            match job {
                Some(job) => jobs.push(Delivery {
                    delivery_id: entry.id,
                    job,
                }),
                None => tracing::error!(id = %entry.id, "reclaimed a malformed job; left pending"),
            }
        }
        Ok(jobs)
    }

    pub(super) async fn queue_depth(&self) -> Result<Option<u64>, BusError> {
        let mut conn = self.conn.clone();
        let depth: u64 = redis::cmd("XLEN")
            .arg(self.keys.jobs())
            .query_async(&mut conn)
            .await?;
        Ok(Some(depth))
    }

    pub(super) async fn keep_alive_jobs(
        &self,
        consumer: &str,
        delivery_ids: &[String],
    ) -> Result<(), BusError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: Value = redis::cmd("XCLAIM")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg(consumer)
            .arg(0)
            .arg(delivery_ids)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
