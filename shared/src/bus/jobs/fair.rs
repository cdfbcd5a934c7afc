//! The fair scheduler's choice, in one process (the memory bus's queue); `job_take.lua` and
//! `job_position.lua` make the same choice on Redis (see `scheduler.rs` for the rules).
//!
//! Invariants: a user is in `waiting` only with at least one job; `running` counts the jobs taken and
//! not acknowledged, per user (a user with none has no entry); every taken job is in `claimed`.

use std::collections::{HashMap, VecDeque};

use super::{Delivery, Fairness, QueueStats};

#[derive(Default)]
pub struct FairQueue {
    next_order: u64,
    /// User -> its waiting jobs, oldest first, each with its enqueue order.
    waiting: HashMap<String, VecDeque<(u64, Delivery)>>,
    running: HashMap<String, u32>,
    /// Delivery id -> its user.
    claimed: HashMap<String, String>,
}

impl FairQueue {
    pub fn push(&mut self, delivery: Delivery) {
        self.next_order += 1;
        self.waiting
            .entry(delivery.job.owner.clone())
            .or_default()
            .push_back((self.next_order, delivery));
    }

    fn running_of(&self, user: &str) -> u32 {
        self.running.get(user).copied().unwrap_or(0)
    }

    /// The user whose oldest waiting job goes next on a free slot, if any may take one.
    fn pick(&self, slots: usize, fairness: Fairness) -> Option<String> {
        let taken: u32 = self.running.values().sum();
        let free = slots.saturating_sub(taken as usize);
        let cap = ((fairness.share * slots as f64).floor() as u32).max(1);
        let others = self.waiting.len() > 1;
        let mut heads: Vec<(u64, &String)> = self
            .waiting
            .iter()
            .filter_map(|(user, jobs)| jobs.front().map(|(order, _)| (*order, user)))
            .collect();
        heads.sort();
        let allowed = |r: u32| r == 0 || free > fairness.reserved;
        let fewest = |within_share: bool| {
            heads
                .iter()
                .map(|(_, user)| (self.running_of(user), *user))
                .filter(|(r, _)| allowed(*r) && (!within_share || *r < cap || !others))
                .min_by_key(|(r, _)| *r)
                .map(|(_, user)| user.clone())
        };
        fewest(true).or_else(|| fewest(false))
    }

    /// Takes the next job for a worker with a free slot (of `slots` in all).
    pub fn take(&mut self, slots: usize, fairness: Fairness) -> Option<Delivery> {
        let user = self.pick(slots, fairness)?;
        let user_running = self.running_of(&user);
        let jobs = self.waiting.get_mut(&user)?;
        let (_, mut delivery) = jobs.pop_front()?;
        if jobs.is_empty() {
            self.waiting.remove(&user);
        }
        delivery.user_running = user_running;
        *self.running.entry(user.clone()).or_default() += 1;
        self.claimed.insert(delivery.delivery_id.clone(), user);
        Some(delivery)
    }

    /// The job is done: its slot goes back to its user.
    pub fn ack(&mut self, delivery_id: &str) {
        let Some(user) = self.claimed.remove(delivery_id) else {
            return;
        };
        if let Some(r) = self.running.get_mut(&user) {
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.running.remove(&user);
            }
        }
    }

    /// Place of a waiting execution in the fair order if nothing finished (1: next), as
    /// `job_position.lua` estimates it.
    pub fn position(&self, execution_id: &str) -> Option<u64> {
        let (user, k, head) = self.waiting.iter().find_map(|(user, jobs)| {
            let k = jobs
                .iter()
                .position(|(_, d)| d.job.execution_id == execution_id)?;
            Some((user, k as i64 + 1, jobs.front()?.0))
        })?;
        let level = i64::from(self.running_of(user)) + k - 1;
        let mut ahead = k - 1;
        for (other, jobs) in &self.waiting {
            if other == user {
                continue;
            }
            let older = jobs.front().is_some_and(|(order, _)| *order < head);
            let n = level - i64::from(self.running_of(other)) + i64::from(older);
            ahead += n.clamp(0, jobs.len() as i64);
        }
        u64::try_from(ahead + 1).ok()
    }

    pub fn stats(&self, slots: usize) -> QueueStats {
        QueueStats {
            waiting: self.waiting.values().map(|j| j.len() as u64).sum(),
            waiting_users: self.waiting.len() as u64,
            running: self.claimed.len() as u64,
            slots: slots as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Job;

    fn job(id: &str, owner: &str) -> Delivery {
        Delivery {
            delivery_id: id.into(),
            job: Job {
                execution_id: id.into(),
                owner: owner.into(),
                ..Job::default()
            },
            user_running: 0,
        }
    }

    fn taken(q: &mut FairQueue, slots: usize, fairness: Fairness) -> Option<String> {
        q.take(slots, fairness).map(|d| d.delivery_id)
    }

    #[test]
    fn a_user_alone_gets_every_slot_and_a_light_user_goes_next() {
        let mut q = FairQueue::default();
        let f = Fairness::default();
        for i in 0..10 {
            q.push(job(&format!("h{i}"), "hog"));
        }
        for i in 0..4 {
            assert_eq!(taken(&mut q, 4, f), Some(format!("h{i}")));
        }
        q.push(job("v", "victim"));
        assert_eq!(q.position("v"), Some(1));
        assert_eq!(q.position("h4"), Some(2));
        q.ack("h0");
        let next = q.take(4, f).unwrap();
        assert_eq!((next.delivery_id.as_str(), next.user_running), ("v", 0));
        q.ack("h1");
        assert_eq!(taken(&mut q, 4, f), Some("h4".into()));
    }

    #[test]
    fn reserved_slots_wait_for_a_user_with_nothing_running() {
        let mut q = FairQueue::default();
        let f = Fairness {
            share: 1.0,
            reserved: 1,
        };
        for i in 0..10 {
            q.push(job(&format!("h{i}"), "hog"));
        }
        for i in 0..3 {
            assert_eq!(taken(&mut q, 4, f), Some(format!("h{i}")));
        }
        assert_eq!(taken(&mut q, 4, f), None, "the last slot is kept");
        q.push(job("v", "victim"));
        assert_eq!(taken(&mut q, 4, f), Some("v".into()));
    }

    #[test]
    fn equal_users_take_turns_and_the_share_caps_a_heavy_one() {
        let mut q = FairQueue::default();
        let f = Fairness {
            share: 0.5,
            reserved: 0,
        };
        for i in 0..4 {
            q.push(job(&format!("a{i}"), "ann"));
        }
        for i in 0..4 {
            q.push(job(&format!("b{i}"), "bob"));
        }
        let order: Vec<String> = (0..4).filter_map(|_| taken(&mut q, 4, f)).collect();
        assert_eq!(order, ["a0", "b0", "a1", "b1"]);
        // Ann at her share (2 of 4) while Bob waits: Bob's turn even with more running.
        let mut q = FairQueue::default();
        q.push(job("a0", "ann"));
        q.push(job("a1", "ann"));
        q.push(job("a2", "ann"));
        assert_eq!(taken(&mut q, 4, f), Some("a0".into()));
        assert_eq!(taken(&mut q, 4, f), Some("a1".into()));
        q.push(job("b0", "bob"));
        q.push(job("b1", "bob"));
        q.push(job("b2", "bob"));
        assert_eq!(taken(&mut q, 4, f), Some("b0".into()));
        assert_eq!(taken(&mut q, 4, f), Some("b1".into()));
        q.ack("a0");
        q.ack("b0");
        assert_eq!(taken(&mut q, 4, f), Some("a2".into()));
        assert_eq!(q.stats(4).waiting, 1);
    }
}
