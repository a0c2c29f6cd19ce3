//! The places among the clients waiting on the change feed (long polls and
//! event streams): `EXDAAS_FEED_MAX_SUBSCRIBERS` in all, and at most
//! `EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT` for one key (or, on a server
//! without keys, one client address), so that one key cannot take them all
//! and lock the others out of the feed.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::auth::Principal;

/// Every place and who holds how many. A cheap-to-clone handle.
#[derive(Debug, Clone)]
pub struct Places {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    total: usize,
    per_client: usize,
    /// Places taken, in all and by each holder. A holder's entry goes when
    /// it holds none, so there are never more entries than places.
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    all: usize,
    by: HashMap<Principal, usize>,
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every place is taken.
    All(usize),
    /// This holder has its whole share.
    Share(usize),
}

impl Places {
    /// `total` places, `per_client` at most for one holder (no more than
    /// `total`).
    pub fn new(total: usize, per_client: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                total,
                per_client: per_client.min(total),
                taken: Mutex::new(Taken::default()),
            }),
        }
    }

    /// A place for `who`, given back when the [`Place`] is dropped.
    pub fn take(&self, who: Principal) -> Result<Place, Full> {
        let shared = &self.shared;
        let mut taken = shared.taken.lock();
        if taken.all >= shared.total {
            return Err(Full::All(shared.total));
        }
        let held = taken.by.entry(who.clone()).or_default();
        if *held >= shared.per_client {
            return Err(Full::Share(shared.per_client));
        }
        *held += 1;
        taken.all += 1;
        Ok(Place {
            places: self.clone(),
            who,
        })
    }

    fn give_back(&self, who: &Principal) {
        let mut taken = self.shared.taken.lock();
        taken.all = taken.all.saturating_sub(1);
        if let Some(held) = taken.by.get_mut(who) {
            *held -= 1;
            if *held == 0 {
                taken.by.remove(who);
            }
        }
    }

    /// Holders with at least one place (for the tests of bounded state).
    #[cfg(test)]
    fn holders(&self) -> usize {
        self.shared.taken.lock().by.len()
    }
}

/// One place, held while its client waits.
#[derive(Debug)]
pub struct Place {
    places: Places,
    who: Principal,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.give_back(&self.who);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(n: u8) -> Principal {
        Principal::Address(std::net::IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn a_holder_gets_its_share_and_the_rest_stay_for_others() {
        let places = Places::new(4, 2);
        let a1 = places.take(address(1)).expect("a place");
        let _a2 = places.take(address(1)).expect("a place");
        assert_eq!(places.take(address(1)).err(), Some(Full::Share(2)));
        let _b1 = places.take(address(2)).expect("a place");
        let _b2 = places.take(address(2)).expect("a place");
        assert_eq!(places.take(address(3)).err(), Some(Full::All(4)));
        drop(a1);
        let _c1 = places.take(address(3)).expect("a place given back");
    }

    #[test]
    fn holders_with_nothing_left_are_forgotten() {
        let places = Places::new(8, 8);
        let held: Vec<Place> = (0..8).map(|n| places.take(address(n)).expect("a place")).collect();
        assert_eq!(places.holders(), 8);
        drop(held);
        assert_eq!(places.holders(), 0);
    }

    #[test]
    fn a_share_larger_than_the_whole_is_the_whole() {
        let places = Places::new(1, 64);
        let _one = places.take(address(1)).expect("a place");
        assert_eq!(places.take(address(2)).err(), Some(Full::All(1)));
    }
}
