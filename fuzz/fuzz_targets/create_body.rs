//! Arbitrary bytes as a create body: never panics; an error changes nothing;
//! a success adds exactly one record, which round-trips, and changes no
//! other.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod shared;
use shared::*;

fuzz_target!(|data: &[u8]| {
    let e = seeded();
    let subjects = subjects();
    let before = snapshot(&e, &subjects, MIDNIGHT);
    let count = e.rule_count();
    let records = e.records();
    match e.create_json(data) {
        Err(err) => {
            assert_eq!(err.code().as_u32(), 4000, "{err}");
            assert_eq!(
                snapshot(&e, &subjects, MIDNIGHT),
                before,
                "state changed after {err}"
            );
        }
        Ok(info) => {
            assert_eq!(e.rule_count(), count + 1);
            assert_eq!(e.get(info.benefit_id().as_str()).as_ref(), Some(&info));
            assert_round_trips(&info);
            // The records before are as they were.
            for r in &records {
                assert_eq!(e.get(r.benefit_id().as_str()).as_ref(), Some(r));
            }
        }
    }
});
