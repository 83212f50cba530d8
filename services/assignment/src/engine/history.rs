//! Past decisions, the only memory the engine has: round-robin turns and users' loads are
//! derived from them on every decision, so the same history always gives the same answer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::rules::{UserId, Weighted};

/// A contact assigned to a user, as a `ContactAssigned` event records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PastDecision {
    pub contact_id: Uuid,
    pub account_id: Option<Uuid>,
    pub user_id: UserId,
    /// The rule that chose the user, e.g. `round_robin#2` or `location/user#1`.
    pub rule: String,
    pub at: DateTime<Utc>,
}

/// The assignments of a location in the order they were made, and the contacts whose
/// conversations are closed (they no longer count against their owner's capacity).
#[derive(Debug, Default)]
pub struct History {
    decisions: Vec<PastDecision>,
    closed: BTreeSet<Uuid>,
    // Indexes over `decisions`, rebuilt from them: no state of their own.
    by_rule: HashMap<String, Vec<usize>>,
    by_user: HashMap<UserId, Vec<usize>>,
    latest: HashMap<(Uuid, Option<Uuid>), usize>,
    // Round-robin replays so far, resumed when decisions are appended (they never change): a
    // cache of a pure function, never a different answer.
    replays: Mutex<HashMap<RotationKey, Replay>>,
}

type RotationKey = (String, Option<Option<Uuid>>, Vec<Weighted>);

#[derive(Debug, Clone)]
struct Replay {
    /// How many of the rule's decisions are replayed into `credit`.
    replayed: usize,
    credit: Vec<i64>,
}

impl Clone for History {
    fn clone(&self) -> Self {
        Self {
            decisions: self.decisions.clone(),
            closed: self.closed.clone(),
            by_rule: self.by_rule.clone(),
            by_user: self.by_user.clone(),
            latest: self.latest.clone(),
            replays: Mutex::new(self.replays.lock().map(|r| r.clone()).unwrap_or_default()),
        }
    }
}

impl History {
    pub fn new(decisions: impl IntoIterator<Item = PastDecision>) -> Self {
        let mut history = Self::default();
        for decision in decisions {
            history.push(decision);
        }
        history
    }

    /// The history with one more decision, the latest.
    pub fn push(&mut self, decision: PastDecision) {
        let index = self.decisions.len();
        self.by_rule
            .entry(decision.rule.clone())
            .or_default()
            .push(index);
        self.by_user
            .entry(decision.user_id.clone())
            .or_default()
            .push(index);
        self.latest
            .insert((decision.contact_id, decision.account_id), index);
        self.decisions.push(decision);
    }

    pub fn close(&mut self, contact_id: Uuid) {
        self.closed.insert(contact_id);
    }

    pub fn decisions(&self) -> &[PastDecision] {
        &self.decisions
    }

    /// Who owns the contact now, for each account it was assigned for.
    pub fn owners_of(&self, contact_id: Uuid) -> Vec<super::Ownership> {
        let mut owners: Vec<(usize, super::Ownership)> = self
            .latest
            .iter()
            .filter(|((contact, _), _)| *contact == contact_id)
            .map(|(_, &i)| {
                let d = &self.decisions[i];
                (
                    i,
                    super::Ownership {
                        account_id: d.account_id,
                        user_id: d.user_id.clone(),
                        since: d.at,
                    },
                )
            })
            .collect();
        owners.sort_by_key(|(i, _)| *i);
        owners.into_iter().map(|(_, o)| o).collect()
    }

    /// Contacts assigned to `user` within `window` before `now` that are still theirs and
    /// still open; a contact assigned for two accounts counts once.
    pub fn open_contacts(&self, user: &UserId, now: DateTime<Utc>, window: Duration) -> usize {
        let Some(indexes) = self.by_user.get(user) else {
            return 0;
        };
        let since = now - window;
        indexes
            .iter()
            .filter(|&&i| {
                let d = &self.decisions[i];
                d.at > since
                    && d.at <= now
                    && self.latest.get(&(d.contact_id, d.account_id)) == Some(&i)
                    && !self.closed.contains(&d.contact_id)
            })
            .map(|&i| self.decisions[i].contact_id)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The order in which a round-robin rule offers its users for the next contact.
    ///
    /// Smooth weighted round-robin (as nginx does it), replayed over the rule's past decisions:
    /// at each step every listed user's credit grows by their weight and the chosen user's drops
    /// by the total weight. A past decision whose user is no longer listed is not replayed.
    /// Credits are kept within ± the total weight, so a user who was away comes back to their
    /// place in the turn instead of being flooded with the contacts they missed. For the next
    /// contact the credits grow once more and users are offered by credit, highest first (ties:
    /// the order the rule lists them).
    ///
    /// `account`: `Some` counts only that account's decisions of the rule (an account's own
    /// rules); `None` counts all of them (a location's rules, shared by its accounts).
    pub fn rotation(
        &self,
        rule: &str,
        account: Option<Option<Uuid>>,
        users: &[Weighted],
    ) -> Vec<usize> {
        let weights: Vec<i64> = users.iter().map(|u| i64::from(u.weight)).collect();
        let total: i64 = weights.iter().sum();
        let key: RotationKey = (rule.to_owned(), account, users.to_vec());
        let mut replays = self
            .replays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let replay = replays.entry(key).or_insert_with(|| Replay {
            replayed: 0,
            credit: vec![0; users.len()],
        });
        let of_rule = self
            .by_rule
            .get(rule)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for &i in &of_rule[replay.replayed.min(of_rule.len())..] {
            let d = &self.decisions[i];
            if account.is_some_and(|a| a != d.account_id) {
                continue;
            }
            let Some(chosen) = users.iter().position(|u| u.user == d.user_id) else {
                continue;
            };
            for (c, w) in replay.credit.iter_mut().zip(&weights) {
                *c += w;
            }
            replay.credit[chosen] -= total;
            for c in replay.credit.iter_mut() {
                *c = (*c).clamp(-total, total);
            }
        }
        replay.replayed = of_rule.len();
        let next: Vec<i64> = replay
            .credit
            .iter()
            .zip(&weights)
            .map(|(c, w)| c + w)
            .collect();
        let mut order: Vec<usize> = (0..users.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(next[i]), i));
        order
    }
}
