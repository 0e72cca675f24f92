//! The checkpoint protocol's rules on both ends, without sockets, threads, clocks or machines: which epoch a
//! checkpoint gets, what an ACK lets the primary release, what a NACK makes it send again, and what the
//! secondary does with each checkpoint that reaches it. `primary.rs` and `secondary.rs` move the bytes and
//! apply the states; these types decide. So the rules are tested here in-process, message by message and
//! against a link that loses, repeats and refuses, beside the end-to-end tests that kill real processes.
//!
//! The rules:
//! - a session's checkpoints are numbered 1, 2, 3, ... (each a delta on the one before, so order matters);
//! - the secondary commits epoch `e` only right after `e - 1`, acknowledges every commit, and acknowledges its
//!   newest commit again when it is sent again (the primary may have missed the first ACK);
//! - a checkpoint the secondary cannot apply is refused (NACK): it keeps its committed state and ignores what
//!   follows until that epoch comes again; the primary then sends it and everything after it again, giving up
//!   on the secondary after [`MAX_NACKS`] refusals of one checkpoint;
//! - an ACK of `e` acknowledges every epoch up to `e`: the primary may release every effect those checkpoints
//!   cover, and no other.

use std::collections::VecDeque;

/// Refusals of one checkpoint after which the primary gives up on its secondary.
pub const MAX_NACKS: u32 = 3;

/// The primary's side: checkpoints sent and not yet acknowledged, with what each covers (the highest gate
/// sequence number whose effect the checkpoint's state includes) and its body, kept for a resend.
pub struct Outbound<B> {
    epoch: u64,
    in_flight: VecDeque<InFlight<B>>,
}

struct InFlight<B> {
    epoch: u64,
    covered: u64,
    body: B,
    nacks: u32,
}

impl<B: Clone> Default for Outbound<B> {
    fn default() -> Self {
        Outbound { epoch: 0, in_flight: VecDeque::new() }
    }
}

impl<B: Clone> Outbound<B> {
    /// A checkpoint covering gate sequence numbers up to `covered` goes out: its epoch.
    pub fn send(&mut self, covered: u64, body: B) -> u64 {
        self.epoch += 1;
        self.in_flight.push_back(InFlight { epoch: self.epoch, covered, body, nacks: 0 });
        self.epoch
    }

    /// Checkpoints sent and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The secondary acknowledged `epoch` (and so every one before it): the highest gate sequence number now
    /// covered by an acknowledged checkpoint, if this ACK acknowledged anything new.
    pub fn ack(&mut self, epoch: u64) -> Option<u64> {
        let mut covered = None;
        while self.in_flight.front().is_some_and(|f| f.epoch <= epoch) {
            covered = self.in_flight.pop_front().map(|f| f.covered);
        }
        covered
    }

    /// The secondary refused `epoch`: the checkpoints to send again, in order (it and its successors), or why
    /// the secondary is to be given up.
    pub fn nack(&mut self, epoch: u64) -> Result<Vec<(u64, B)>, String> {
        let Some(f) = self.in_flight.iter_mut().find(|f| f.epoch == epoch) else {
            return Err(format!("refusal of checkpoint {epoch}, which is not in flight"));
        };
        f.nacks += 1;
        if f.nacks > MAX_NACKS {
            return Err(format!("checkpoint {epoch} refused {} times", f.nacks));
        }
        Ok(self.in_flight.iter().filter(|f| f.epoch >= epoch).map(|f| (f.epoch, f.body.clone())).collect())
    }
}

/// The secondary's side: the newest committed epoch, and whether it waits for a refused one to come again.
#[derive(Debug, Default)]
pub struct Inbound {
    committed: u64,
    resyncing: bool,
}

/// What the secondary does with a checkpoint of a given epoch.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// The next one: verify and apply it, then report [`Inbound::committed`] or [`Inbound::refused`].
    Apply,
    /// The newest committed one, sent again: acknowledge it again.
    AckAgain,
    /// An older one sent again, or one after a refused checkpoint: drop it.
    Ignore,
    /// One that skips epochs: the primary broke the protocol; end the session.
    OutOfSequence(String),
}

impl Inbound {
    /// The newest committed epoch (0: none yet).
    pub fn committed_epoch(&self) -> u64 {
        self.committed
    }

    pub fn offered(&self, epoch: u64) -> Offered {
        let next = self.committed + 1;
        match epoch {
            e if e == self.committed && e > 0 => Offered::AckAgain,
            e if e <= self.committed => Offered::Ignore,
            e if e == next => Offered::Apply,
            _ if self.resyncing => Offered::Ignore,
            e => Offered::OutOfSequence(format!("checkpoint {e} out of sequence (committed {})", self.committed)),
        }
    }

    /// The checkpoint [`Offered::Apply`] named was applied: acknowledge `epoch`.
    pub fn committed(&mut self, epoch: u64) {
        debug_assert_eq!(epoch, self.committed + 1, "only the next epoch is applied");
        self.committed = epoch;
        self.resyncing = false;
    }

    /// The checkpoint [`Offered::Apply`] named could not be applied: refuse `epoch`; what follows it is
    /// dropped until it comes again.
    pub fn refused(&mut self) {
        self.resyncing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_releases_what_the_checkpoints_up_to_it_cover() {
        let mut out = Outbound::default();
        assert_eq!((out.send(10, "a"), out.send(12, "b"), out.send(12, "c")), (1, 2, 3));
        assert_eq!(out.ack(2), Some(12), "an ACK covers every epoch before it");
        assert_eq!(out.in_flight(), 1);
        assert_eq!(out.ack(2), None, "a repeated ACK acknowledges nothing new");
        assert_eq!(out.ack(1), None, "an ACK from the past neither");
        assert_eq!(out.ack(3), Some(12));
        assert_eq!(out.in_flight(), 0);
    }

    #[test]
    fn a_nack_resends_the_checkpoint_and_its_successors_then_gives_up() {
        let mut out = Outbound::default();
        for (covered, body) in [(1, "a"), (2, "b"), (3, "c")] {
            out.send(covered, body);
        }
        assert_eq!(out.nack(2).unwrap(), vec![(2, "b"), (3, "c")]);
        assert!(out.nack(7).unwrap_err().contains("not in flight"));
        for _ in 1..MAX_NACKS {
            out.nack(2).unwrap();
        }
        assert!(out.nack(2).unwrap_err().contains("refused 4 times"));
    }

    #[test]
    fn the_secondary_commits_in_order_and_waits_for_a_refused_checkpoint() {
        let mut inb = Inbound::default();
        assert_eq!(inb.offered(0), Offered::Ignore);
        assert!(matches!(inb.offered(2), Offered::OutOfSequence(_)));
        assert_eq!(inb.offered(1), Offered::Apply);
        inb.committed(1);
        assert_eq!(inb.offered(1), Offered::AckAgain);
        assert_eq!(inb.offered(2), Offered::Apply);
        inb.refused();
        assert_eq!(inb.offered(3), Offered::Ignore, "after a refusal, what follows is dropped");
        assert_eq!((inb.offered(1), inb.offered(2)), (Offered::AckAgain, Offered::Apply));
        inb.committed(2);
        assert!(matches!(inb.offered(4), Offered::OutOfSequence(_)), "a gap is no longer expected");
        assert_eq!(inb.committed_epoch(), 2);
    }

    /// A tiny deterministic generator, so that a failing run can be repeated from its seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Both ends against each other over an ordered link (as TCP is), the secondary refusing checkpoints at
    /// random (a failed verification): whatever is refused, the secondary commits 1, 2, 3, ... each once and
    /// in order, the primary releases only what a committed checkpoint covers, and once the traffic stops
    /// everything sent is committed and released, unless the primary gave up on the secondary.
    #[test]
    fn whatever_is_refused_the_secondary_commits_in_order_and_releases_follow_commits() {
        for seed in 1..300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let (mut out, mut inb) = (Outbound::default(), Inbound::default());
            let mut to_secondary: VecDeque<(u64, u64)> = VecDeque::new();
            let mut to_primary: VecDeque<Result<u64, u64>> = VecDeque::new();
            let (mut commits, mut released, mut sent, mut gave_up) = (Vec::<(u64, u64)>::new(), 0u64, 0u64, false);
            for step in 0.. {
                let quiet = step >= 400;
                if quiet && (gave_up || (to_secondary.is_empty() && to_primary.is_empty())) {
                    break;
                }
                match rng.below(3) {
                    // The primary takes a checkpoint (its body is what it covers), a few in flight at most.
                    0 if !quiet && out.in_flight() < 8 => {
                        sent += 1;
                        let epoch = out.send(sent, sent);
                        to_secondary.push_back((epoch, sent));
                    }
                    0 | 1 => {
                        let Some((epoch, covers)) = to_secondary.pop_front() else { continue };
                        match inb.offered(epoch) {
                            Offered::Apply if rng.below(4) == 0 => {
                                inb.refused();
                                to_primary.push_back(Err(epoch));
                            }
                            Offered::Apply => {
                                inb.committed(epoch);
                                commits.push((epoch, covers));
                                to_primary.push_back(Ok(epoch));
                            }
                            Offered::AckAgain => to_primary.push_back(Ok(epoch)),
                            Offered::Ignore => {}
                            Offered::OutOfSequence(why) => panic!("seed {seed} step {step}: {why}"),
                        }
                    }
                    _ => match to_primary.pop_front() {
                        Some(Ok(epoch)) => {
                            if let Some(covered) = out.ack(epoch) {
                                let committed = commits.iter().find(|c| c.0 == epoch).map(|c| c.1);
                                assert_eq!(Some(covered), committed, "seed {seed}: released past a commit");
                                released = covered;
                            }
                        }
                        Some(Err(epoch)) => match out.nack(epoch) {
                            Ok(again) => to_secondary.extend(again),
                            Err(_) => gave_up = true,
                        },
                        None => {}
                    },
                }
            }
            let epochs: Vec<u64> = commits.iter().map(|c| c.0).collect();
            assert_eq!(epochs, (1..=epochs.len() as u64).collect::<Vec<_>>(), "seed {seed}: commits out of order");
            if !gave_up {
                assert_eq!((released, out.in_flight()), (sent, 0), "seed {seed}: not everything was released");
            }
        }
    }
}
