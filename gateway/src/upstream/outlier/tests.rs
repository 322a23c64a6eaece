use super::*;

const S: Duration = Duration::from_secs(1);

fn cfg() -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: 3,
        consecutive_connect_failures: 2,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(35),
        max_ejection_percent: 50,
    }
}

/// Records `n` outcomes; true if one of them ejected.
fn fail(o: &Outlier, idx: usize, outcome: Outcome, n: u32, now: Instant) -> bool {
    (0..n).fold(false, |ejected, _| o.record(idx, outcome, now) | ejected)
}

#[test]
fn consecutive_5xx_eject_and_a_success_ends_the_streak() {
    let o = Outlier::new(cfg(), 4);
    let t = Instant::now();
    assert!(!fail(&o, 0, Outcome::Status5xx, 2, t));
    assert!(!o.record(0, Outcome::Success, t));
    assert!(!fail(&o, 0, Outcome::Status5xx, 2, t));
    assert!(!o.is_ejected(0, t));
    assert!(o.record(0, Outcome::Status5xx, t));
    assert!(o.is_ejected(0, t));
    assert_eq!(o.ejections(0), 1);
    assert!(!o.is_ejected(1, t));
}

#[test]
fn timeouts_count_as_5xx() {
    let o = Outlier::new(cfg(), 4);
    let t = Instant::now();
    assert!(!fail(&o, 2, Outcome::Timeout, 2, t));
    assert!(o.record(2, Outcome::Status5xx, t));
}

#[test]
fn connect_failures_eject_on_their_own_threshold() {
    let t = Instant::now();
    let o = Outlier::new(
        OutlierConfig {
            consecutive_5xx: 100,
            ..cfg()
        },
        4,
    );
    assert!(!o.record(1, Outcome::ConnectFailure, t));
    // A response (even a 5xx) means the connection worked.
    assert!(!o.record(1, Outcome::Status5xx, t));
    assert!(!o.record(1, Outcome::ConnectFailure, t));
    assert!(!o.is_ejected(1, t));
    assert!(o.record(1, Outcome::ConnectFailure, t));
}

#[test]
fn connect_failures_also_count_as_failed_attempts() {
    let t = Instant::now();
    let o = Outlier::new(
        OutlierConfig {
            consecutive_connect_failures: 0,
            ..cfg()
        },
        4,
    );
    assert!(!o.record(1, Outcome::ConnectFailure, t));
    assert!(!o.record(1, Outcome::Status5xx, t));
    assert!(o.record(1, Outcome::ConnectFailure, t));
}

#[test]
fn a_zero_threshold_turns_a_detector_off() {
    let cfg = OutlierConfig {
        consecutive_5xx: 0,
        consecutive_connect_failures: 0,
        ..cfg()
    };
    let o = Outlier::new(cfg, 4);
    let t = Instant::now();
    assert!(!fail(&o, 0, Outcome::Status5xx, 100, t));
    assert!(!fail(&o, 0, Outcome::ConnectFailure, 100, t));
}

#[test]
fn ejection_ends_after_base_and_grows_on_repeat_up_to_max() {
    let o = Outlier::new(cfg(), 4);
    let t0 = Instant::now();
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t0));
    assert!(o.is_ejected(0, t0 + 9 * S));
    assert!(!o.is_ejected(0, t0 + 10 * S));

    // Second ejection right after: 2 × 10 s.
    let t1 = t0 + 10 * S;
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t1));
    assert_eq!(o.ejections(0), 2);
    assert!(o.is_ejected(0, t1 + 19 * S));
    assert!(!o.is_ejected(0, t1 + 20 * S));

    // Third: 30 s; fourth: 40 s capped at 35 s.
    let t2 = t1 + 20 * S;
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t2));
    assert!(!o.is_ejected(0, t2 + 30 * S));
    let t3 = t2 + 30 * S;
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t3));
    assert_eq!(o.ejections(0), 4);
    assert!(o.is_ejected(0, t3 + 34 * S));
    assert!(!o.is_ejected(0, t3 + 35 * S));
}

#[test]
fn outcomes_during_an_ejection_are_ignored() {
    let o = Outlier::new(cfg(), 4);
    let t = Instant::now();
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t));
    assert!(!fail(&o, 0, Outcome::Status5xx, 10, t + S));
    assert!(!o.record(0, Outcome::Success, t + S));
    assert_eq!(o.ejections(0), 1);
    assert!(o.is_ejected(0, t + 9 * S));
    assert!(!o.is_ejected(0, t + 10 * S));
    // The streak restarts from zero after the ejection.
    assert!(!fail(&o, 0, Outcome::Status5xx, 2, t + 10 * S));
}

#[test]
fn past_ejections_are_forgotten_one_per_healthy_base_period() {
    let o = Outlier::new(cfg(), 4);
    let t0 = Instant::now();
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t0));
    let t1 = t0 + 10 * S;
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t1));
    let t2 = t1 + 20 * S;
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t2));
    assert_eq!(o.ejections(0), 3);
    // Ejected until t2 + 30 s; healthy for one full period after that.
    let back = t2 + 30 * S;
    o.record(0, Outcome::Success, back + 9 * S);
    assert_eq!(o.ejections(0), 3);
    o.record(0, Outcome::Success, back + 10 * S);
    assert_eq!(o.ejections(0), 2);
    o.record(0, Outcome::Success, back + 25 * S);
    assert_eq!(o.ejections(0), 1);
    // Ejected again before the next period is up: 2 × base, not 4 ×.
    let t3 = back + 29 * S;
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t3));
    assert_eq!(o.ejections(0), 2);
    assert!(!o.is_ejected(0, t3 + 20 * S));
    o.record(0, Outcome::Success, t3 + 1000 * S);
    assert_eq!(o.ejections(0), 0);
}

#[test]
fn max_ejection_percent_caps_ejections() {
    // 50% of 4: two at once.
    let o = Outlier::new(cfg(), 4);
    let t = Instant::now();
    assert!(fail(&o, 0, Outcome::Status5xx, 3, t));
    assert!(fail(&o, 1, Outcome::Status5xx, 3, t));
    assert!(!fail(&o, 2, Outcome::Status5xx, 5, t));
    assert_eq!(o.ejected_count(t), 2);
    // Once one is back, the next failure of the waiting one ejects it.
    let later = t + 10 * S;
    assert_eq!(o.ejected_count(later), 0);
    assert!(o.record(2, Outcome::Status5xx, later));
    assert_eq!(o.ejected_count(later), 1);
}

#[test]
fn at_least_one_but_never_all_and_never_a_lone_endpoint() {
    let with = |percent, n| {
        let o = Outlier::new(
            OutlierConfig {
                max_ejection_percent: percent,
                ..cfg()
            },
            n,
        );
        let t = Instant::now();
        for i in 0..n {
            fail(&o, i, Outcome::Status5xx, 3, t);
        }
        o.ejected_count(t)
    };
    assert_eq!(with(10, 4), 1, "10% of 4 rounds down to 0, but one may go");
    assert_eq!(with(10, 2), 1);
    assert_eq!(with(10, 20), 2);
    assert_eq!(with(10, 19), 1);
    assert_eq!(with(100, 3), 2, "never all");
    assert_eq!(with(100, 1), 0, "a lone endpoint stays");
    assert_eq!(with(0, 10), 0, "0% turns ejection off");
}

#[test]
fn unknown_index_is_harmless() {
    let o = Outlier::new(cfg(), 2);
    let t = Instant::now();
    assert!(!fail(&o, 7, Outcome::Status5xx, 10, t));
    assert!(!o.is_ejected(7, t));
    assert_eq!(o.ejections(7), 0);
}

#[test]
fn default_config_is_envoys() {
    let d = OutlierConfig::default();
    assert_eq!((d.consecutive_5xx, d.consecutive_connect_failures), (5, 5));
    assert_eq!((d.base_ejection, d.max_ejection), (30 * S, 300 * S));
    assert_eq!(d.max_ejection_percent, 10);
}

#[test]
fn panic_threshold() {
    assert!(!in_panic(2, 4, 50), "exactly half is not panic");
    assert!(in_panic(1, 4, 50));
    assert!(in_panic(0, 1, 50));
    assert!(!in_panic(1, 1, 50));
    assert!(!in_panic(0, 4, 0), "0 turns panic mode off");
    assert!(in_panic(9, 10, 100));
    assert!(!in_panic(0, 0, 50), "no endpoints: nothing to panic about");
}
