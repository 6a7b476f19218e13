//! The responder side: answers requests from a summary, statelessly.
//!
//! Stateless so that the daemon can serve any number of peers with nothing to expire: every
//! request carries what is needed to answer it (the salt and the prefixes).

use super::summary::ItemSource;
use super::wire::{Fingerprinter, encoded_len};
use super::{
    Answer, ChildSummaries, DESCENT_LIST_MAX, Descent, Hello, HelloReply, IdList, ItemFp, ItemFps,
    LEAF_MAX, MAX_COMPARE_NIBBLES, MAX_LIST_IDS, MAX_MESSAGE_BYTES, MAX_QUERIES_PER_REQUEST, Mask,
    Prefix, Query, ReconcileError, Request, Response, Round, RoundReply, Summary,
};

/// Encoded size of [`Answer::Deferred`] (the CBOR text string "z").
const DEFERRED_BYTES: usize = 2;

/// Bytes the answers of one reply may use: what remains of [`MAX_MESSAGE_BYTES`] after framing
/// and after reserving room to defer every query.
const ANSWER_BUDGET: usize = MAX_MESSAGE_BYTES - 64 - MAX_QUERIES_PER_REQUEST * DEFERRED_BYTES;

/// Answers one request from `local`.
///
/// Fails on a request that breaks the protocol's limits ([`ReconcileError::TooManyQueries`],
/// [`ReconcileError::BadQuery`]); the reply never exceeds [`MAX_MESSAGE_BYTES`], because
/// queries that do not fit are answered [`Answer::Deferred`].
pub fn respond<S: ItemSource>(
    local: &Summary<S>,
    request: &Request,
) -> Result<Response, ReconcileError> {
    match request {
        Request::Hello(hello) => hello_reply(local, hello).map(Response::Hello),
        Request::Round(round) => round_reply(local, round).map(Response::Round),
    }
}

/// [`respond`] on encoded messages: decodes (enforcing [`MAX_MESSAGE_BYTES`] and the decoding
/// bounds), answers and encodes. This is what the daemon's request handler calls.
pub fn respond_bytes<S: ItemSource>(
    local: &Summary<S>,
    request: &[u8],
) -> Result<Vec<u8>, ReconcileError> {
    respond(local, &Request::decode(request)?)?.encode()
}

fn hello_reply<S: ItemSource>(
    local: &Summary<S>,
    hello: &Hello,
) -> Result<HelloReply, ReconcileError> {
    let (root, count) = (local.root(), local.len());
    let differs = root != hello.root || count != hello.count;
    let children = if differs {
        Some(child_summaries(
            local,
            &Prefix::ROOT,
            &Fingerprinter::new(&hello.salt),
        )?)
    } else {
        None
    };
    Ok(HelloReply {
        root,
        count,
        children,
    })
}

/// Our wire summaries of the children of `p` (`p` shorter than 64 nibbles, checked by callers).
pub(crate) fn child_summaries<S: ItemSource>(
    local: &Summary<S>,
    p: &Prefix,
    fp: &Fingerprinter,
) -> Result<ChildSummaries, ReconcileError> {
    let children = local.child_summaries(p)?.unwrap_or([(0, [0; 32]); 16]);
    Ok(fp.children(&children))
}

fn validate(index: usize, q: &Query) -> Result<(), ReconcileError> {
    let bad = |reason| Err(ReconcileError::BadQuery { index, reason });
    match q {
        Query::Compare(p, _) if p.len() > MAX_COMPARE_NIBBLES => {
            bad("compare prefix deeper than MAX_COMPARE_NIBBLES")
        }
        Query::Items(_, fps) if fps.0.len() > LEAF_MAX => bad("more than LEAF_MAX fingerprints"),
        _ => Ok(()),
    }
}

fn round_reply<S: ItemSource>(
    local: &Summary<S>,
    round: &Round,
) -> Result<RoundReply, ReconcileError> {
    if round.queries.len() > MAX_QUERIES_PER_REQUEST {
        return Err(ReconcileError::TooManyQueries {
            count: round.queries.len(),
        });
    }
    // Validate everything first so a bad request fails whole, however full the reply gets.
    for (i, q) in round.queries.iter().enumerate() {
        validate(i, q)?;
    }
    let fp = Fingerprinter::new(&round.salt);
    let mut answers = Vec::with_capacity(round.queries.len());
    let mut used = 0;
    for q in &round.queries {
        if used > ANSWER_BUDGET {
            answers.push(Answer::Deferred);
            continue;
        }
        let answer = answer(local, &fp, q)?;
        used += encoded_len(&answer)?;
        // The first answer always fits (at most 16 id lists of MAX_LIST_IDS ids, about 530 KB),
        // so every round makes progress.
        answers.push(if used > ANSWER_BUDGET && !answers.is_empty() {
            Answer::Deferred
        } else {
            answer
        });
    }
    Ok(RoundReply { answers })
}

/// The cheapest useful description of a differing child (see [`Descent`]).
fn descent<S: ItemSource>(
    local: &Summary<S>,
    fp: &Fingerprinter,
    nibble: u8,
    child: &Prefix,
    their_count: u64,
    our_count: u64,
) -> Result<Descent, ReconcileError> {
    Ok(if their_count == 0 && our_count as usize <= MAX_LIST_IDS {
        let items = local.items(child, MAX_LIST_IDS)?;
        Descent::Ids(nibble, IdList(items.iter().map(|it| it.id).collect()))
    } else if our_count as usize <= DESCENT_LIST_MAX {
        let items = local.items(child, DESCENT_LIST_MAX)?;
        Descent::Items(
            nibble,
            IdList(items.iter().map(|it| it.id).collect()),
            ItemFps(items.iter().map(|it| fp.item(&it.id, &it.digest)).collect()),
        )
    } else {
        // `child` is at most 63 nibbles long (Compare prefixes are at most 62).
        Descent::Children(nibble, child_summaries(local, child, fp)?)
    })
}

fn answer<S: ItemSource>(
    local: &Summary<S>,
    fp: &Fingerprinter,
    q: &Query,
) -> Result<Answer, ReconcileError> {
    Ok(match q {
        Query::Compare(p, theirs) => {
            let ours = child_summaries(local, p, fp)?;
            let mut descents = Vec::new();
            for n in (0..16).filter(|&n| ours.0[n] != theirs.0[n]) {
                let Some(child) = p.child(n) else { continue };
                descents.push(descent(
                    local,
                    fp,
                    n as u8,
                    &child,
                    theirs.0[n].count,
                    ours.0[n].count,
                )?);
            }
            Answer::Descend(descents)
        }
        Query::Items(p, theirs) => {
            let (count, _) = local.range_summary(p)?;
            if count as usize > MAX_LIST_IDS && p.len() < super::MAX_PREFIX_NIBBLES {
                return Ok(Answer::Split(child_summaries(local, p, fp)?));
            }
            let mut their_sorted: Vec<ItemFp> = theirs.0.clone();
            their_sorted.sort_unstable();
            let mut ours: Vec<ItemFp> = Vec::with_capacity(count as usize);
            let mut need = Vec::new();
            for item in local.items(p, MAX_LIST_IDS)? {
                let f = fp.item(&item.id, &item.digest);
                if their_sorted.binary_search(&f).is_err() {
                    need.push(item.id);
                }
                ours.push(f);
            }
            ours.sort_unstable();
            let mut mask = Mask::zeros(theirs.0.len());
            for (i, f) in theirs.0.iter().enumerate() {
                if ours.binary_search(f).is_err() {
                    mask.set(i);
                }
            }
            Answer::Diff(IdList(need), mask)
        }
    })
}
