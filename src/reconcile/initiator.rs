//! The initiator side: drives a session and collects the difference.

use std::collections::VecDeque;

use super::responder::child_summaries;
use super::summary::ItemSource;
use super::wire::Fingerprinter;
use super::{
    Answer, ChildSummaries, Descent, Hash, Hello, Id, IdList, ItemFp, ItemFps, LEAF_MAX,
    MAX_COMPARE_NIBBLES, MAX_LIST_IDS, MAX_PENDING, MAX_PREFIX_NIBBLES, MAX_QUERIES_PER_REQUEST,
    MAX_ROUNDS, Prefix, Query, ReconcileError, Request, Response, Round, Salt, Summary,
};

/// What the daemon should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this request to the responder and feed its response to
    /// [`Initiator::on_response`].
    Send(Request),
    /// The session is over.
    Done(Outcome),
}

/// The result of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Ids the responder holds that we lack or hold with another digest (sorted, unique): pull
    /// and merge these.
    pub need: Vec<Id>,
    /// Ids we hold that the responder lacks or holds with another digest (sorted, unique): push
    /// these, or let the responder pull them. Empty once more than the limit set with
    /// [`Initiator::limit_offer`] were found (`offered` says how many).
    pub offer: Vec<Id>,
    /// How many ids we offer: `offer.len()`, or more when they were too many to keep.
    pub offered: usize,
    /// False if the session stopped at [`MAX_ROUNDS`] with ranges left unexplored; `need` and
    /// `offer` are then correct but partial.
    pub complete: bool,
    /// Round trips used, the Hello included.
    pub rounds: u32,
}

/// Ids needed so far, taken before the session ends ([`Initiator::take_need`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeedBatch {
    /// Ids the responder holds that we lack or hold with another digest (sorted, unique).
    pub ids: Vec<Id>,
    /// Those of `ids` we offer too (held here with another digest; sorted, unique): the only
    /// ones a pull could have to send back.
    pub offered: Vec<Id>,
}

/// A range to ask about in a later round.
#[derive(Clone, Copy, Debug)]
enum Pending {
    Compare(Prefix),
    Items(Prefix),
}

/// A query sent and not yet answered, with what is needed to interpret its answer.
#[derive(Debug)]
enum InFlight {
    Compare(Prefix),
    /// The ids whose fingerprints were sent, in the order sent.
    Items(Prefix, Vec<Id>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitRound,
    Done,
}

/// State machine of the side that starts a session (see the protocol in
/// [`crate::reconcile`]). Pure: the caller carries messages and passes the current local
/// summary at every step, so the store may change between rounds.
#[derive(Debug)]
pub struct Initiator {
    salt: Salt,
    state: State,
    hello_root: Hash,
    hello_count: u64,
    pending: VecDeque<Pending>,
    in_flight: Vec<InFlight>,
    need: Vec<Id>,
    /// Of `need`, the ids also in `offer`: decided by the same answer as their need, so a
    /// batch taken early carries them ([`NeedBatch::offered`]).
    need_offered: Vec<Id>,
    offer: Vec<Id>,
    /// Ids offered so far, kept or not.
    offered: usize,
    /// Most offered ids kept; past it none are (see [`Self::limit_offer`]).
    offer_limit: usize,
    rounds: u32,
}

impl Initiator {
    /// Starts a session over `local` with a fresh random `salt` (the daemon draws it from its
    /// RNG; reusing a salt only makes a fingerprint collision repeatable) and returns the Hello
    /// to send.
    pub fn start<S: ItemSource>(local: &Summary<S>, salt: Salt) -> (Initiator, Request) {
        let (root, count) = (local.root(), local.len());
        let me = Initiator {
            salt,
            state: State::AwaitHello,
            hello_root: root,
            hello_count: count,
            pending: VecDeque::new(),
            in_flight: Vec::new(),
            need: Vec::new(),
            need_offered: Vec::new(),
            offer: Vec::new(),
            offered: 0,
            offer_limit: usize::MAX,
            rounds: 0,
        };
        (me, Request::Hello(Hello { salt, root, count }))
    }

    /// Round trips completed so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Keeps the offered ids only while there are at most `max` of them: past it they are
    /// counted, not kept, and a subtree the responder lacks is counted from our summary without
    /// listing it. A session pushes a small difference itself, and lets the responder pull a
    /// big one: a first sync of 10^6 entries held every id (32 MB, 48 while the vector grew) on
    /// the side that had them, and pushed them all while the other side pulled them too.
    pub fn limit_offer(&mut self, max: usize) {
        self.offer_limit = max;
        self.drop_offer_past_limit();
    }

    /// True once more ids were offered than [`Self::limit_offer`] keeps.
    pub fn offer_over_limit(&self) -> bool {
        self.offered > self.offer_limit
    }

    fn drop_offer_past_limit(&mut self) {
        if self.offer_over_limit() && !self.offer.is_empty() {
            self.offer = Vec::new();
        }
    }

    /// How many needed ids were found since the last [`Self::take_need`].
    pub fn needed_so_far(&self) -> usize {
        self.need.len()
    }

    /// Takes the ids needed so far, for the caller to pull while the session goes on; the
    /// outcome's `need` holds only those found after. A first sync of 10^6 entries used to hold
    /// every id (32 MB) until its last round, and through the whole pull after it. An id is
    /// found needed once (the ranges answered do not overlap), so nothing is taken twice.
    pub fn take_need(&mut self) -> NeedBatch {
        let mut ids = std::mem::take(&mut self.need);
        let mut offered = std::mem::take(&mut self.need_offered);
        ids.sort_unstable();
        ids.dedup();
        offered.sort_unstable();
        offered.dedup();
        NeedBatch { ids, offered }
    }

    /// Feeds the responder's response to the last request. An error ends the session.
    pub fn on_response<S: ItemSource>(
        &mut self,
        local: &Summary<S>,
        response: Response,
    ) -> Result<Step, ReconcileError> {
        let result = self.handle(local, response);
        if result.is_err() {
            self.state = State::Done;
        }
        result
    }

    fn handle<S: ItemSource>(
        &mut self,
        local: &Summary<S>,
        response: Response,
    ) -> Result<Step, ReconcileError> {
        let fp = Fingerprinter::new(&self.salt);
        match (self.state, response) {
            (State::Done, _) => return Err(ReconcileError::SessionFinished),
            (State::AwaitHello, Response::Hello(reply)) => {
                self.rounds = 1;
                if reply.root == self.hello_root && reply.count == self.hello_count {
                    return Ok(self.finish(true));
                }
                let children = reply.children.ok_or(ReconcileError::BadAnswer {
                    index: 0,
                    reason: "roots differ but the hello reply carries no children",
                })?;
                self.on_children(local, &fp, &Prefix::ROOT, &children, 0)?;
            }
            (State::AwaitRound, Response::Round(reply)) => {
                self.rounds += 1;
                let in_flight = std::mem::take(&mut self.in_flight);
                if reply.answers.len() != in_flight.len() {
                    return Err(ReconcileError::AnswerCountMismatch {
                        sent: in_flight.len(),
                        received: reply.answers.len(),
                    });
                }
                for (index, (query, answer)) in in_flight.into_iter().zip(reply.answers).enumerate()
                {
                    self.on_answer(local, &fp, index, query, answer)?;
                }
            }
            (State::AwaitHello, Response::Round(_)) => {
                return Err(ReconcileError::UnexpectedResponse {
                    expected: "a hello reply",
                });
            }
            (State::AwaitRound, Response::Hello(_)) => {
                return Err(ReconcileError::UnexpectedResponse {
                    expected: "a round reply",
                });
            }
        }
        self.next_step(local, &fp)
    }

    fn on_answer<S: ItemSource>(
        &mut self,
        local: &Summary<S>,
        fp: &Fingerprinter,
        index: usize,
        query: InFlight,
        answer: Answer,
    ) -> Result<(), ReconcileError> {
        let bad = |reason| ReconcileError::BadAnswer { index, reason };
        match (query, answer) {
            (InFlight::Compare(p), Answer::Descend(descents)) => {
                let mut last = None;
                for descent in descents {
                    let n = descent.nibble();
                    if last.is_some_and(|l| l >= n) {
                        return Err(bad("descents not strictly ascending"));
                    }
                    last = Some(n);
                    let child = p
                        .child(usize::from(n))
                        .ok_or(bad("descent nibble above 15"))?;
                    match descent {
                        Descent::Children(_, grandchildren) => {
                            self.on_children(local, fp, &child, &grandchildren, index)?;
                        }
                        Descent::Ids(_, ids) => {
                            check_ids(&child, &ids).map_err(bad)?;
                            self.need.extend_from_slice(&ids.0);
                        }
                        Descent::Items(_, ids, fps) => {
                            check_ids(&child, &ids).map_err(bad)?;
                            if ids.0.len() != fps.0.len() {
                                return Err(bad("listed ids and fingerprints differ in number"));
                            }
                            self.on_listed(local, fp, &child, &ids.0, &fps.0)?;
                        }
                    }
                }
            }
            (InFlight::Items(p, _), Answer::Split(children)) => {
                if p.len() >= MAX_PREFIX_NIBBLES {
                    return Err(bad("split of a full-length prefix"));
                }
                self.on_children(local, fp, &p, &children, index)?;
            }
            (InFlight::Items(p, sent), Answer::Diff(need, mask)) => {
                if mask.0.len() != sent.len().div_ceil(8)
                    || (sent.len()..mask.0.len() * 8).any(|i| mask.get(i))
                {
                    return Err(bad("mask does not match the fingerprints sent"));
                }
                check_ids(&p, &need).map_err(bad)?;
                self.need.extend_from_slice(&need.0);
                let offered: Vec<Id> = sent
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask.get(*i))
                    .map(|(_, id)| *id)
                    .collect();
                // `need` is strictly ascending (checked above).
                let both = offered
                    .iter()
                    .filter(|id| need.0.binary_search(*id).is_ok());
                self.need_offered.extend(both);
                self.add_offered(&offered);
            }
            (query, Answer::Deferred) => self.push(match query {
                InFlight::Compare(p) => Pending::Compare(p),
                InFlight::Items(p, _) => Pending::Items(p),
            })?,
            _ => return Err(bad("answer kind does not match the query")),
        }
        Ok(())
    }

    /// Compares the responder's summaries of the children of `p` with ours and decides, per
    /// differing child, how to continue (see the protocol in the module docs).
    fn on_children<S: ItemSource>(
        &mut self,
        local: &Summary<S>,
        fp: &Fingerprinter,
        p: &Prefix,
        theirs: &ChildSummaries,
        index: usize,
    ) -> Result<(), ReconcileError> {
        let ours = local.child_summaries(p)?.ok_or(ReconcileError::BadAnswer {
            index,
            reason: "summaries below a full-length prefix",
        })?;
        for (n, (count, hash)) in ours.iter().enumerate() {
            let remote = theirs.0[n];
            if fp.range(*count, hash) == remote {
                continue;
            }
            let Some(child) = p.child(n) else { continue };
            let (local_n, remote_n) = (*count as usize, remote.count);
            if remote_n == 0 {
                self.offered += local_n;
                if self.offer_over_limit() {
                    self.drop_offer_past_limit();
                } else {
                    let ours = local.items(&child, usize::MAX)?;
                    self.offer.extend(ours.iter().map(|it| it.id));
                }
            } else if (local_n == 0 && remote_n <= MAX_LIST_IDS as u64)
                || (local_n <= LEAF_MAX && remote_n <= LEAF_MAX as u64)
                || child.len() > MAX_COMPARE_NIBBLES
            {
                self.push(Pending::Items(child))?;
            } else {
                self.push(Pending::Compare(child))?;
            }
        }
        Ok(())
    }

    /// Exact difference within `child` from the responder's complete listing of it.
    fn on_listed<S: ItemSource>(
        &mut self,
        local: &Summary<S>,
        fp: &Fingerprinter,
        child: &Prefix,
        ids: &[Id],
        fps: &[ItemFp],
    ) -> Result<(), ReconcileError> {
        // Both lists are sorted by id: merge-walk them.
        let mut theirs = ids.iter().zip(fps).peekable();
        for item in local.items(child, usize::MAX)? {
            while let Some((id, _)) = theirs.next_if(|(id, _)| **id < item.id) {
                self.need.push(*id);
            }
            match theirs.next_if(|(id, _)| **id == item.id) {
                Some((_, f)) if *f == fp.item(&item.id, &item.digest) => {}
                Some(_) => {
                    self.need.push(item.id);
                    self.need_offered.push(item.id);
                    self.add_offered(&[item.id]);
                }
                None => self.add_offered(&[item.id]),
            }
        }
        self.need.extend(theirs.map(|(id, _)| *id));
        Ok(())
    }

    fn add_offered(&mut self, ids: &[Id]) {
        self.offered += ids.len();
        if self.offer_over_limit() {
            self.drop_offer_past_limit();
        } else {
            self.offer.extend_from_slice(ids);
        }
    }

    fn push(&mut self, p: Pending) -> Result<(), ReconcileError> {
        if self.pending.len() >= MAX_PENDING {
            return Err(ReconcileError::TooManyPending);
        }
        self.pending.push_back(p);
        Ok(())
    }

    fn next_step<S: ItemSource>(
        &mut self,
        local: &Summary<S>,
        fp: &Fingerprinter,
    ) -> Result<Step, ReconcileError> {
        if self.pending.is_empty() {
            return Ok(self.finish(true));
        }
        if self.rounds >= MAX_ROUNDS {
            return Ok(self.finish(false));
        }
        let mut queries = Vec::with_capacity(self.pending.len().min(MAX_QUERIES_PER_REQUEST));
        while queries.len() < MAX_QUERIES_PER_REQUEST {
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            let (query, in_flight) = match pending {
                Pending::Items(p) => {
                    let mine = local.items(&p, LEAF_MAX + 1)?;
                    // Only if our side grew past LEAF_MAX since we decided to list it.
                    if mine.len() > LEAF_MAX && p.len() <= MAX_COMPARE_NIBBLES {
                        compare_query(local, fp, p)?
                    } else {
                        let fps = mine.iter().map(|it| fp.item(&it.id, &it.digest)).collect();
                        let ids = mine.iter().map(|it| it.id).collect();
                        (Query::Items(p, ItemFps(fps)), InFlight::Items(p, ids))
                    }
                }
                Pending::Compare(p) => compare_query(local, fp, p)?,
            };
            queries.push(query);
            self.in_flight.push(in_flight);
        }
        self.state = State::AwaitRound;
        Ok(Step::Send(Request::Round(Round {
            salt: self.salt,
            queries,
        })))
    }

    fn finish(&mut self, complete: bool) -> Step {
        self.state = State::Done;
        let mut need = std::mem::take(&mut self.need);
        self.need_offered = Vec::new();
        let mut offer = std::mem::take(&mut self.offer);
        need.sort_unstable();
        need.dedup();
        offer.sort_unstable();
        offer.dedup();
        Step::Done(Outcome {
            need,
            offered: if self.offer_over_limit() {
                self.offered
            } else {
                offer.len()
            },
            offer,
            complete,
            rounds: self.rounds,
        })
    }
}

/// Checks that listed ids are strictly ascending and inside the range they answer for.
fn check_ids(range: &Prefix, ids: &IdList) -> Result<(), &'static str> {
    if !ids.0.iter().all(|id| range.contains(id)) {
        return Err("listed id outside the queried range");
    }
    if !ids.0.windows(2).all(|w| w[0] < w[1]) {
        return Err("listed ids not strictly ascending");
    }
    Ok(())
}

fn compare_query<S: ItemSource>(
    local: &Summary<S>,
    fp: &Fingerprinter,
    p: Prefix,
) -> Result<(Query, InFlight), ReconcileError> {
    Ok((
        Query::Compare(p, child_summaries(local, &p, fp)?),
        InFlight::Compare(p),
    ))
}
