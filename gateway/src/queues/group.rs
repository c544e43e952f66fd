//! One queue group's state, with no I/O: members and their windows, the jobs not yet
//! acked (ready, delayed, or in flight with a deadline), strict per-topic order.
//!
//! Call order for a driver: [`Group::offer`] each record of the group's topics as it
//! commits; [`Group::join`] / [`Group::leave`] as members come and go; [`Group::answer`]
//! for each `ack`/`nak`/`progress`/`term`; [`Group::expire`] when
//! [`Group::next_deadline`] passes; then [`Group::assign`] and push what it returns. Every
//! dead letter any call returns must be published to `$dlq.queue.<group>`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use edgesync_protocol::{Ordering, Origin, Verdict};

/// A member: one connection's subscription to the group.
pub type MemberId = u64;

/// Names one message of the group: the record's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    pub topic: String,
    pub origin: Origin,
    pub seq: u64,
}

/// The group's options (set by its first member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    /// How long a member may hold a delivery without an answer.
    pub ack_wait: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliveries: u32,
    /// `Strict`: one job per topic in flight (or waiting out a nak delay) at a time.
    pub ordering: Ordering,
}

/// A job handed to a member: push it as a `msg` with `queue` and `delivery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<M> {
    pub member: MemberId,
    pub key: JobKey,
    pub msg: M,
    /// This delivery's number, 1 on the first.
    pub delivery: u32,
}

/// A job the group gives up on: publish it to `$dlq.queue.<group>` with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<M> {
    pub key: JobKey,
    pub msg: M,
    /// Deliveries made.
    pub deliveries: u32,
    /// `max_deliveries`, or the member's `term` reason (`term` when it gave none).
    pub reason: String,
}

/// What an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered<M> {
    /// Acked after being held this long (the ack latency).
    Acked { held: Duration },
    /// Back in line (a nak), at once or after its delay.
    Requeued,
    /// The ack wait restarted.
    Extended,
    /// Dead-lettered (a `term`, or a nak of the last allowed delivery).
    Dead(DeadLetter<M>),
}

/// The answer names a job this member does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotInFlight;

#[derive(Debug)]
enum State {
    Ready,
    Delayed {
        until: Instant,
    },
    InFlight {
        member: MemberId,
        since: Instant,
        deadline: Instant,
    },
}

#[derive(Debug)]
struct Job<M> {
    msg: M,
    deliveries: u32,
    /// The member that held it last: a redelivery goes elsewhere when it can.
    last: Option<MemberId>,
    state: State,
}

#[derive(Debug)]
struct Member {
    max_unacked: u32,
    held: BTreeSet<JobKey>,
}

impl Member {
    fn has_room(&self) -> bool {
        self.held.len() < self.max_unacked as usize
    }
}

/// One queue group. `M` is the message handed out (the gateway's stored record).
#[derive(Debug)]
pub struct Group<M> {
    opts: GroupOptions,
    members: BTreeMap<MemberId, Member>,
    /// Jobs waiting for a member, in the order they should go out.
    ready: VecDeque<JobKey>,
    /// Every job not yet acked or dead-lettered.
    jobs: HashMap<JobKey, Job<M>>,
    /// Strict ordering: topics with a job in flight or delayed.
    busy: HashSet<String>,
    /// Round robin: the member after which the next search starts.
    turn: MemberId,
}

impl<M: Clone> Group<M> {
    pub fn new(opts: GroupOptions) -> Self {
        Group {
            opts,
            members: BTreeMap::new(),
            ready: VecDeque::new(),
            jobs: HashMap::new(),
            busy: HashSet::new(),
            turn: 0,
        }
    }

    pub fn options(&self) -> GroupOptions {
        self.opts
    }

    /// Jobs not yet acked or dead-lettered (ready, delayed and in flight).
    pub fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// Jobs held by members now.
    pub fn in_flight(&self) -> usize {
        self.members.values().map(|m| m.held.len()).sum()
    }

    /// The members' windows added up: how much the group can have out at once.
    pub fn windows(&self) -> usize {
        self.members.values().map(|m| m.max_unacked as usize).sum()
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// A new job; false (and nothing changes) when the group already has it.
    pub fn offer(&mut self, key: JobKey, msg: M) -> bool {
        if self.jobs.contains_key(&key) {
            return false;
        }
        let job = Job {
            msg,
            deliveries: 0,
            last: None,
            state: State::Ready,
        };
        self.jobs.insert(key.clone(), job);
        self.ready.push_back(key);
        true
    }

    /// A member joins (or changes its window).
    pub fn join(&mut self, member: MemberId, max_unacked: u32) {
        self.members
            .entry(member)
            .and_modify(|m| m.max_unacked = max_unacked)
            .or_insert(Member {
                max_unacked,
                held: BTreeSet::new(),
            });
    }

    /// A member leaves (unsubscribed or disconnected): what it held goes back in line,
    /// ahead of everything waiting. Returns how many jobs it gave back.
    pub fn leave(&mut self, member: MemberId) -> usize {
        let Some(m) = self.members.remove(&member) else {
            return 0;
        };
        let n = m.held.len();
        for key in m.held.into_iter().rev() {
            self.requeue(key, None);
        }
        n
    }

    /// A member's answer for the job `key`.
    ///
    /// # Errors
    /// [`NotInFlight`] when `member` does not hold `key`.
    pub fn answer(
        &mut self,
        member: MemberId,
        key: &JobKey,
        verdict: &Verdict,
        now: Instant,
    ) -> Result<Answered<M>, NotInFlight> {
        let since = match self.jobs.get(key).map(|j| &j.state) {
            Some(State::InFlight {
                member: holder,
                since,
                ..
            }) if *holder == member => *since,
            _ => return Err(NotInFlight),
        };
        match verdict {
            Verdict::Ack => {
                self.release(member, key);
                self.jobs.remove(key);
                self.busy.remove(&key.topic);
                Ok(Answered::Acked {
                    held: now.saturating_duration_since(since),
                })
            }
            Verdict::Progress => {
                if let Some(Job {
                    state: State::InFlight { deadline, .. },
                    ..
                }) = self.jobs.get_mut(key)
                {
                    *deadline = now + self.opts.ack_wait;
                }
                Ok(Answered::Extended)
            }
            Verdict::Nak { delay_ms } => {
                self.release(member, key);
                if let Some(dead) = self.dead_if_spent(key) {
                    return Ok(Answered::Dead(dead));
                }
                let until = (*delay_ms > 0).then(|| now + Duration::from_millis(*delay_ms));
                self.requeue(key.clone(), until);
                Ok(Answered::Requeued)
            }
            Verdict::Term { reason } => {
                self.release(member, key);
                let reason = if reason.is_empty() {
                    "term"
                } else {
                    reason.as_str()
                };
                self.kill(key, reason.to_string())
                    .map(Answered::Dead)
                    .ok_or(NotInFlight)
            }
        }
    }

    /// Jobs whose ack wait passed go back in line (or to the dead letters when they had
    /// their last delivery); delays that passed end.
    pub fn expire(&mut self, now: Instant) -> Vec<DeadLetter<M>> {
        let mut timed_out = Vec::new();
        let mut woke = Vec::new();
        for (key, job) in &self.jobs {
            match job.state {
                State::InFlight {
                    member, deadline, ..
                } if deadline <= now => {
                    timed_out.push((key.clone(), member));
                }
                State::Delayed { until } if until <= now => woke.push(key.clone()),
                _ => {}
            }
        }
        timed_out.sort();
        woke.sort();
        let mut dead = Vec::new();
        for (key, member) in timed_out {
            self.release(member, &key);
            match self.dead_if_spent(&key) {
                Some(d) => dead.push(d),
                None => self.requeue(key, None),
            }
        }
        for key in woke.into_iter().rev() {
            if let Some(job) = self.jobs.get_mut(&key) {
                job.state = State::Ready;
                self.busy.remove(&key.topic);
                self.ready.push_front(key);
            }
        }
        dead
    }

    /// The earliest ack-wait deadline or delay end: call [`Group::expire`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter_map(|j| match j.state {
                State::InFlight { deadline, .. } => Some(deadline),
                State::Delayed { until } => Some(until),
                State::Ready => None,
            })
            .min()
    }

    /// Hand ready jobs to members with room, round robin, a redelivery to another member
    /// than the last one when one has room; under strict ordering, skipping topics that
    /// have a job out. Looks at each ready job at most once.
    pub fn assign(&mut self, now: Instant) -> Vec<Delivery<M>> {
        let mut out = Vec::new();
        let mut skipped = VecDeque::new();
        while let Some(key) = self.ready.pop_front() {
            if self.opts.ordering == Ordering::Strict && self.busy.contains(&key.topic) {
                skipped.push_back(key);
                continue;
            }
            let last = self.jobs.get(&key).and_then(|j| j.last);
            let Some(member) = self.pick(last) else {
                skipped.push_back(key);
                break;
            };
            let Some(job) = self.jobs.get_mut(&key) else {
                continue; // cannot happen: ready keys are jobs; skip rather than panic
            };
            job.deliveries += 1;
            job.last = Some(member);
            job.state = State::InFlight {
                member,
                since: now,
                deadline: now + self.opts.ack_wait,
            };
            if let Some(m) = self.members.get_mut(&member) {
                m.held.insert(key.clone());
            }
            if self.opts.ordering == Ordering::Strict {
                self.busy.insert(key.topic.clone());
            }
            out.push(Delivery {
                member,
                msg: job.msg.clone(),
                delivery: job.deliveries,
                key,
            });
        }
        while let Some(key) = skipped.pop_back() {
            self.ready.push_front(key);
        }
        out
    }

    /// The next member with room after `turn`, avoiding `last` when another has room.
    fn pick(&mut self, last: Option<MemberId>) -> Option<MemberId> {
        let after = self.members.range(self.turn + 1..).map(|(id, m)| (*id, m));
        let before = self.members.range(..=self.turn).map(|(id, m)| (*id, m));
        let mut fallback = None;
        for (id, m) in after.chain(before) {
            if !m.has_room() {
                continue;
            }
            if Some(id) == last {
                fallback = Some(id);
                continue;
            }
            self.turn = id;
            return Some(id);
        }
        if let Some(id) = fallback {
            self.turn = id;
        }
        fallback
    }

    /// The member no longer holds `key`.
    fn release(&mut self, member: MemberId, key: &JobKey) {
        if let Some(m) = self.members.get_mut(&member) {
            m.held.remove(key);
        }
    }

    /// Back in line: ahead of everything (a redelivery keeps its topic's order), or
    /// delayed until `until`. Under strict ordering the topic stays busy while delayed.
    fn requeue(&mut self, key: JobKey, until: Option<Instant>) {
        let Some(job) = self.jobs.get_mut(&key) else {
            return;
        };
        match until {
            Some(until) => job.state = State::Delayed { until },
            None => {
                job.state = State::Ready;
                self.busy.remove(&key.topic);
                self.ready.push_front(key);
            }
        }
    }

    /// Dead-lettered when it had its last delivery.
    fn dead_if_spent(&mut self, key: &JobKey) -> Option<DeadLetter<M>> {
        let spent = self.jobs.get(key)?.deliveries >= self.opts.max_deliveries;
        if !spent {
            return None;
        }
        self.kill(key, "max_deliveries".into())
    }

    /// Remove the job for the dead letters (`None` when there is no such job).
    fn kill(&mut self, key: &JobKey, reason: String) -> Option<DeadLetter<M>> {
        let job = self.jobs.remove(key)?;
        self.busy.remove(&key.topic);
        Some(DeadLetter {
            key: key.clone(),
            msg: job.msg,
            deliveries: job.deliveries,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, seq: u64) -> JobKey {
        JobKey {
            topic: topic.into(),
            origin: Origin::new("n1", 1),
            seq,
        }
    }

    fn group(ordering: Ordering, max_deliveries: u32) -> Group<u64> {
        Group::new(GroupOptions {
            ack_wait: Duration::from_secs(30),
            max_deliveries,
            ordering,
        })
    }

    /// Offer `n` jobs on `topic`, payload = seq.
    fn offer(g: &mut Group<u64>, topic: &str, n: u64) {
        for seq in 1..=n {
            assert!(g.offer(key(topic, seq), seq));
        }
    }

    #[test]
    fn competing_members_get_each_job_once_within_their_windows() {
        let now = Instant::now();
        let mut g = group(Ordering::Parallel, 5);
        for m in [1, 2, 3] {
            g.join(m, 2);
        }
        offer(&mut g, "jobs.a", 10);
        assert!(!g.offer(key("jobs.a", 3), 3), "a job is offered once");
        let first = g.assign(now);
        assert_eq!(first.len(), 6, "three windows of two");
        for m in [1, 2, 3] {
            assert_eq!(first.iter().filter(|d| d.member == m).count(), 2);
        }
        assert!(g.assign(now).is_empty(), "full windows get nothing new");
        let mut seen: Vec<u64> = first.iter().map(|d| d.msg).collect();
        let mut rounds = 0;
        let mut out = first;
        while !out.is_empty() && rounds < 20 {
            for d in &out {
                assert_eq!(d.delivery, 1);
                let a = g
                    .answer(d.member, &d.key, &Verdict::Ack, now)
                    .expect("held");
                assert!(matches!(a, Answered::Acked { .. }));
            }
            out = g.assign(now);
            seen.extend(out.iter().map(|d| d.msg));
            rounds += 1;
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "each job exactly once");
        assert_eq!((g.pending(), g.in_flight()), (0, 0));
    }

    #[test]
    fn answers_from_anyone_but_the_holder_are_not_in_flight() {
        let now = Instant::now();
        let mut g = group(Ordering::Parallel, 5);
        g.join(1, 1);
        g.join(2, 1);
        offer(&mut g, "a", 1);
        let d = g.assign(now).remove(0);
        let other = if d.member == 1 { 2 } else { 1 };
        assert_eq!(
            g.answer(other, &d.key, &Verdict::Ack, now),
            Err(NotInFlight)
        );
        assert_eq!(
            g.answer(d.member, &key("a", 9), &Verdict::Ack, now),
            Err(NotInFlight)
        );
        assert!(g.answer(d.member, &d.key, &Verdict::Ack, now).is_ok());
        assert_eq!(
            g.answer(d.member, &d.key, &Verdict::Ack, now),
            Err(NotInFlight),
            "twice"
        );
    }

    #[test]
    fn a_member_that_leaves_gives_its_jobs_to_another() {
        let now = Instant::now();
        let mut g = group(Ordering::Parallel, 5);
        g.join(1, 4);
        offer(&mut g, "a", 3);
        assert_eq!(g.assign(now).len(), 3);
        g.join(2, 4);
        assert_eq!(g.leave(1), 3);
        let again = g.assign(now);
        assert_eq!(
            again
                .iter()
                .map(|d| (d.member, d.msg, d.delivery))
                .collect::<Vec<_>>(),
            vec![(2, 1, 2), (2, 2, 2), (2, 3, 2)]
        );
    }

    #[test]
    fn ack_wait_redelivers_to_another_member_and_progress_extends_it() {
        let now = Instant::now();
        let wait = Duration::from_secs(30);
        let mut g = group(Ordering::Parallel, 5);
        g.join(1, 1);
        g.join(2, 1);
        offer(&mut g, "a", 2);
        let out = g.assign(now);
        let (slow, busy) = (&out[0], &out[1]);
        assert_eq!(g.next_deadline(), Some(now + wait));
        let later = now + Duration::from_secs(20);
        assert_eq!(
            g.answer(busy.member, &busy.key, &Verdict::Progress, later),
            Ok(Answered::Extended)
        );
        let t = now + wait;
        assert!(g.expire(t).is_empty());
        // `slow` timed out; `busy` still has 20 s. Its member is still full, so the
        // redelivery goes back to the one with room: the same member as before.
        let re = g.assign(t);
        assert_eq!(re.len(), 1);
        assert_eq!(
            (&re[0].key, re[0].delivery, re[0].member),
            (&slow.key, 2, slow.member)
        );
        // Once the other member has room, a redelivery avoids the last holder.
        let mut g = group(Ordering::Parallel, 5);
        g.join(1, 1);
        g.join(2, 1);
        offer(&mut g, "a", 1);
        let d = g.assign(now).remove(0);
        g.expire(now + wait);
        let re = g.assign(now + wait).remove(0);
        assert_ne!(re.member, d.member, "redelivered to another member");
    }

    #[test]
    fn max_deliveries_and_term_dead_letter_with_their_reason() {
        let now = Instant::now();
        let wait = Duration::from_secs(30);
        let mut g = group(Ordering::Parallel, 2);
        g.join(1, 8);
        offer(&mut g, "a", 2);
        let out = g.assign(now);
        assert_eq!(
            g.answer(1, &out[0].key, &Verdict::Nak { delay_ms: 0 }, now),
            Ok(Answered::Requeued)
        );
        let re = g.assign(now);
        assert_eq!((re.len(), re[0].delivery), (1, 2));
        match g.answer(1, &re[0].key, &Verdict::Nak { delay_ms: 0 }, now) {
            Ok(Answered::Dead(d)) => {
                assert_eq!(
                    (d.msg, d.deliveries, d.reason.as_str()),
                    (1, 2, "max_deliveries")
                );
            }
            other => panic!("{other:?}"),
        }
        let term = Verdict::Term {
            reason: "bad input".into(),
        };
        match g.answer(1, &out[1].key, &term, now) {
            Ok(Answered::Dead(d)) => assert_eq!((d.msg, d.reason.as_str()), (2, "bad input")),
            other => panic!("{other:?}"),
        }
        assert_eq!(g.pending(), 0);
        // A timeout on the last delivery dead-letters too.
        let mut g = group(Ordering::Parallel, 1);
        g.join(1, 1);
        offer(&mut g, "a", 1);
        g.assign(now);
        let dead = g.expire(now + wait);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "max_deliveries");
        assert_eq!((g.pending(), g.in_flight()), (0, 0));
    }

    #[test]
    fn a_nak_delay_holds_the_job_back_until_it_passes() {
        let now = Instant::now();
        let mut g = group(Ordering::Parallel, 5);
        g.join(1, 1);
        offer(&mut g, "a", 1);
        let d = g.assign(now).remove(0);
        g.answer(1, &d.key, &Verdict::Nak { delay_ms: 500 }, now)
            .expect("nak");
        assert!(g.assign(now).is_empty(), "delayed");
        assert_eq!(g.next_deadline(), Some(now + Duration::from_millis(500)));
        g.expire(now + Duration::from_millis(499));
        assert!(g.assign(now + Duration::from_millis(499)).is_empty());
        g.expire(now + Duration::from_millis(500));
        let re = g.assign(now + Duration::from_millis(500));
        assert_eq!((re.len(), re[0].delivery), (1, 2));
    }

    #[test]
    fn strict_ordering_keeps_one_job_per_topic_out() {
        let now = Instant::now();
        let mut g = group(Ordering::Strict, 5);
        g.join(1, 10);
        g.join(2, 10);
        offer(&mut g, "a", 3);
        offer(&mut g, "b", 2);
        let out = g.assign(now);
        let mut firsts: Vec<_> = out
            .iter()
            .map(|d| (d.key.topic.clone(), d.key.seq))
            .collect();
        firsts.sort();
        assert_eq!(
            firsts,
            vec![("a".into(), 1), ("b".into(), 1)],
            "one per topic"
        );
        // A nak with a delay keeps the topic blocked: a.2 never overtakes a.1.
        let a1 = out.iter().find(|d| d.key.topic == "a").expect("a");
        g.answer(a1.member, &a1.key, &Verdict::Nak { delay_ms: 100 }, now)
            .expect("nak");
        assert!(g.assign(now).is_empty());
        g.expire(now + Duration::from_millis(100));
        let re = g.assign(now + Duration::from_millis(100));
        assert_eq!(
            (re[0].key.seq, re[0].delivery),
            (1, 2),
            "a.1 again, before a.2"
        );
        let mut order = vec![1];
        let mut next = re.into_iter().next();
        for _ in 0..5 {
            let Some(d) = next.take() else { break };
            g.answer(d.member, &d.key, &Verdict::Ack, now).expect("ack");
            next = g.assign(now).into_iter().find(|d| d.key.topic == "a");
            if let Some(d) = &next {
                order.push(d.key.seq);
            }
        }
        assert_eq!(order, vec![1, 2, 3], "topic a in order");
    }
}
