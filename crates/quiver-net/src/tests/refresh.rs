use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

#[test]
fn an_empty_table_refreshes_nothing() {
    assert!(buckets_to_refresh(&[]).is_empty());
}

#[test]
fn only_buckets_beyond_the_closest_neighbour_and_short_of_peers_are_refreshed() {
    // Closest neighbour in bucket 246; 250 and 255 already hold enough peers.
    let fill = [(246, 3), (248, 9), (250, REFRESH_BELOW), (255, 20)];
    let wanted = buckets_to_refresh(&fill);
    assert_eq!(wanted, vec![247, 248, 249, 251, 252, 253, 254]);
}

#[test]
fn a_table_whose_closest_bucket_is_the_farthest_has_nothing_beyond_it() {
    assert!(buckets_to_refresh(&[(FARTHEST_BUCKET, 1)]).is_empty());
}

#[test]
fn each_key_lands_in_the_bucket_it_was_drawn_for() {
    let mut rng = StdRng::seed_from_u64(7);
    let local = KBucketKey::from(PeerId::random());
    let wanted = [246, 250, 253, 255];
    let keys = keys_in_buckets(&local, &wanted, &mut rng);
    let got: Vec<u32> = keys.iter().map(|(i, _)| *i).collect();
    assert_eq!(got, wanted);
    for (i, preimage) in keys {
        assert_eq!(local.distance(&KBucketKey::from(preimage)).ilog2(), Some(i));
    }
}

#[test]
fn a_bucket_too_deep_to_draw_is_left_out() {
    // Bucket 100 would take ~2^156 draws; the others are found and the search stays bounded.
    let mut rng = StdRng::seed_from_u64(1);
    let local = KBucketKey::from(PeerId::random());
    let keys = keys_in_buckets(&local, &[100, 254], &mut rng);
    assert_eq!(keys.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![254]);
}

#[test]
fn a_full_table_is_not_refreshed_again_before_the_period() {
    let now = Instant::now();
    let (at, backoff) = next_retry(3, BUCKET_SIZE, Duration::from_secs(8), Duration::from_secs(300), now);
    assert_eq!(at, None);
    assert_eq!(backoff, RETRY_MIN);
}

#[test]
fn a_table_that_grew_but_is_short_is_refreshed_again_soon() {
    let now = Instant::now();
    let (at, backoff) = next_retry(1, 12, Duration::from_secs(16), Duration::from_secs(300), now);
    assert_eq!(at, Some(now + RETRY_MIN));
    assert_eq!(backoff, RETRY_MIN);
}

#[test]
fn refreshes_that_add_nobody_back_off_up_to_the_period() {
    let now = Instant::now();
    let max = Duration::from_secs(300);
    let mut backoff = RETRY_MIN;
    let mut waits = Vec::new();
    for _ in 0..10 {
        let (at, next) = next_retry(4, 4, backoff, max, now);
        let at = at.expect("a short table is refreshed again");
        waits.push((at - now).as_secs());
        backoff = next;
    }
    assert_eq!(waits, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
}

#[test]
fn a_new_node_checks_its_table_after_the_shortest_wait() {
    let refresh = Refresh::new(PeerId::random(), Duration::from_secs(300));
    assert!(!refresh.running());
    assert!(!refresh.retry_due(Instant::now()));
    assert!(refresh.retry_due(Instant::now() + RETRY_MIN));
}
