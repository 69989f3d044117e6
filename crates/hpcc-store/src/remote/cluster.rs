//! [`Cluster`]: several stores sharing the keys, each key on `replicas` of them.
//!
//! Placement is rendezvous (highest-random-weight) hashing: every member scores every key by
//! `BLAKE3(member name, kind, key)`, and a key lives on the members with the highest scores.
//! Adding a member moves only the copies it now wins, about 1/N of them, and removing one
//! moves only its own; no ring or virtual nodes to tune, and N is small.
//!
//! Reads walk the ranking, skipping members in their cooldown, until one has the object or
//! `replicas` healthy members have said it is absent; a hit found past a member that missed
//! is copied back to it (read repair), so a member that was down catches up. Writes go to
//! the first `replicas` healthy members of the ranking, so while one is down its copies land
//! on the next member, where the same walk will find them.
//!
//! A scoped view ([`Store::scoped`]) scopes every member under the same names, so a key
//! ranks the same in every namespace, and shares the members' health: a member that failed
//! for one tenant is skipped for all. Deleting or measuring a namespace asks every member,
//! healthy or not, since copies may sit anywhere; a usage counts each copy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hpcc_core::digest::Digest;
use tokio::time::Instant;

use super::{spawn_named, Health, RemoteError, Store};
use crate::Kind;

#[derive(Debug)]
struct Member {
    store: Arc<dyn Store>,
    /// Shared with the same member in scoped views.
    health: Arc<Health>,
}

/// Stores sharing keys by rendezvous hashing, with replication.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    members: Vec<Member>,
    replicas: usize,
}

impl Cluster {
    /// A cluster of `members` (each with its cooldown), `replicas` copies of each key.
    pub fn new(
        name: String,
        members: Vec<(Arc<dyn Store>, Duration)>,
        replicas: usize,
    ) -> Result<Cluster, RemoteError> {
        if members.is_empty() || replicas == 0 || replicas > members.len() {
            return Err(RemoteError::Config {
                store: name,
                message: format!(
                    "replicas = {replicas} needs between 1 and {} members",
                    members.len()
                ),
            });
        }
        Ok(Cluster {
            name,
            members: members
                .into_iter()
                .map(|(store, cooldown)| Member {
                    store,
                    health: Arc::new(Health::new(cooldown)),
                })
                .collect(),
            replicas,
        })
    }

    /// Member indexes, best first, for `key`.
    pub fn ranking(&self, kind: Kind, key: &Digest) -> Vec<usize> {
        rank(
            self.members.iter().map(|member| member.store.name()),
            kind,
            key,
        )
    }

    fn usable(&self, index: usize) -> bool {
        self.members[index]
            .health
            .down_for(Instant::now())
            .is_none()
    }

    fn failed(&self, index: usize, error: &RemoteError) {
        tracing::warn!(cluster = %self.name, error = %error, "cluster member failed; routing around it");
        self.members[index].health.failed(Instant::now());
    }
}

/// Ranks members (by name) for a key: highest rendezvous score first.
pub fn rank<'a>(names: impl Iterator<Item = &'a str>, kind: Kind, key: &Digest) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = names
        .enumerate()
        .map(|(index, name)| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&[matches!(kind, Kind::Manifest) as u8]);
            hasher.update(&key.0);
            let hash = hasher.finalize();
            let mut score = [0u8; 8];
            score.copy_from_slice(&hash.as_bytes()[..8]);
            (u64::from_le_bytes(score), index)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, index)| index).collect()
}

#[async_trait]
impl Store for Cluster {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, kind: Kind, key: &Digest) -> Result<Option<Bytes>, RemoteError> {
        let mut missed: Vec<usize> = Vec::new();
        let mut last_error = None;
        for index in self.ranking(kind, key) {
            if missed.len() >= self.replicas {
                break;
            }
            if !self.usable(index) {
                continue;
            }
            let member = &self.members[index];
            match member.store.get(kind, key).await {
                Ok(Some(object)) => {
                    member.health.succeeded();
                    for repair in missed {
                        let repair: usize = repair;
                        let store: Arc<dyn Store> = Arc::clone(&self.members[repair].store);
                        let object = object.clone();
                        let key = *key;
                        spawn_named("read-repair", async move {
                            let _ = store.put(kind, &key, object).await;
                        });
                    }
                    return Ok(Some(object));
                }
                Ok(None) => {
                    member.health.succeeded();
                    missed.push(index);
                }
                Err(error) => {
                    self.failed(index, &error);
                    last_error = Some(error);
                }
            }
        }
        if !missed.is_empty() {
            return Ok(None);
        }
        Err(last_error.unwrap_or_else(|| RemoteError::Down {
            store: self.name.clone(),
            remaining: Duration::ZERO,
        }))
    }

    async fn put(&self, kind: Kind, key: &Digest, object: Bytes) -> Result<(), RemoteError> {
        let mut written = 0;
        let mut last_error = None;
        for index in self.ranking(kind, key) {
            if written >= self.replicas {
                break;
            }
            if !self.usable(index) {
                continue;
            }
            match self.members[index]
                .store
                .put(kind, key, object.clone())
                .await
            {
                Ok(()) => written += 1,
                Err(error) => {
                    self.failed(index, &error);
                    last_error = Some(error);
                }
            }
        }
        match (written, last_error) {
            (0, Some(error)) => Err(error),
            (0, None) => Err(RemoteError::Down {
                store: self.name.clone(),
                remaining: Duration::ZERO,
            }),
            _ => Ok(()),
        }
    }

    async fn exists(&self, kind: Kind, key: &Digest) -> Result<bool, RemoteError> {
        let mut answered = 0;
        let mut last_error = None;
        for index in self.ranking(kind, key) {
            if answered >= self.replicas {
                break;
            }
            if !self.usable(index) {
                continue;
            }
            match self.members[index].store.exists(kind, key).await {
                Ok(true) => return Ok(true),
                Ok(false) => answered += 1,
                Err(error) => {
                    self.failed(index, &error);
                    last_error = Some(error);
                }
            }
        }
        match (answered, last_error) {
            (0, Some(error)) => Err(error),
            _ => Ok(false),
        }
    }

    async fn delete(&self, kind: Kind, key: &Digest) -> Result<(), RemoteError> {
        // Copies may sit past the first `replicas` members (written while one was down).
        let mut last_error = None;
        for index in self.ranking(kind, key) {
            if let Err(error) = self.members[index].store.delete(kind, key).await {
                last_error = Some(error);
            }
        }
        last_error.map_or(Ok(()), Err)
    }

    fn scoped(&self, namespace: &str) -> Result<Arc<dyn Store>, RemoteError> {
        let members = self
            .members
            .iter()
            .map(|member| {
                Ok(Member {
                    store: member.store.scoped(namespace)?,
                    health: Arc::clone(&member.health),
                })
            })
            .collect::<Result<Vec<_>, RemoteError>>()?;
        Ok(Arc::new(Cluster {
            name: self.name.clone(),
            members,
            replicas: self.replicas,
        }))
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<u64, RemoteError> {
        // Every member, even after one fails: as much as can be removed is removed, and the
        // error says the deletion is incomplete.
        let mut removed = 0;
        let mut last_error = None;
        for member in &self.members {
            match member.store.delete_namespace(namespace).await {
                Ok(count) => removed += count,
                Err(error) => last_error = Some(error),
            }
        }
        last_error.map_or(Ok(removed), Err)
    }

    async fn namespace_usage(&self, namespace: &str) -> Result<(u64, u64), RemoteError> {
        let (mut objects, mut bytes) = (0, 0);
        for member in &self.members {
            let (member_objects, member_bytes) = member.store.namespace_usage(namespace).await?;
            objects += member_objects;
            bytes += member_bytes;
        }
        Ok((objects, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count)
            .map(|index| format!("redis://10.0.0.{index}"))
            .collect()
    }

    fn placements(names: &[String], replicas: usize, keys: u32) -> Vec<Vec<String>> {
        (0..keys)
            .map(|seed| {
                let key = Digest::of(&seed.to_le_bytes());
                let mut set: Vec<String> =
                    rank(names.iter().map(String::as_str), Kind::Result, &key)
                        .into_iter()
                        .take(replicas)
                        .map(|index| names[index].clone())
                        .collect();
                set.sort();
                set
            })
            .collect()
    }

    #[test]
    fn adding_a_member_moves_about_one_nth_of_the_copies() {
        const KEYS: u32 = 20_000;
        for (before, replicas) in [(4usize, 1usize), (4, 2), (9, 2)] {
            let old_names = names(before);
            let new_names = names(before + 1);
            let newcomer = &new_names[before];
            let old = placements(&old_names, replicas, KEYS);
            let new = placements(&new_names, replicas, KEYS);
            let mut moved = 0usize;
            for (old_set, new_set) in old.iter().zip(&new) {
                let lost: Vec<_> = old_set
                    .iter()
                    .filter(|name| !new_set.contains(name))
                    .collect();
                let gained: Vec<_> = new_set
                    .iter()
                    .filter(|name| !old_set.contains(name))
                    .collect();
                // A copy only ever moves to the newcomer, never between old members.
                assert!(
                    gained.iter().all(|name| *name == newcomer),
                    "{old_set:?} -> {new_set:?}"
                );
                assert_eq!(lost.len(), gained.len());
                moved += lost.len();
            }
            let fraction = moved as f64 / (f64::from(KEYS) * replicas as f64);
            let expected = 1.0 / (before + 1) as f64;
            assert!(
                (fraction - expected).abs() < expected * 0.1,
                "{before}+1 members, R={replicas}: moved {fraction:.4}, expected about {expected:.4}"
            );
        }
    }

    #[test]
    fn placement_is_balanced_and_kinds_differ() {
        let members = names(3);
        let mut primaries = [0u32; 3];
        let mut same = 0;
        for seed in 0..9_000u32 {
            let key = Digest::of(&seed.to_le_bytes());
            let result = rank(members.iter().map(String::as_str), Kind::Result, &key);
            let manifest = rank(members.iter().map(String::as_str), Kind::Manifest, &key);
            primaries[result[0]] += 1;
            same += u32::from(result[0] == manifest[0]);
        }
        for count in primaries {
            assert!((2_700..3_300).contains(&count), "{primaries:?}");
        }
        assert!(same < 4_000, "the kind takes part in placement: {same}");
    }
}
