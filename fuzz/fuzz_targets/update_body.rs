//! Arbitrary bytes as a PUT body: never panics; an error changes nothing;
//! a success is stored and round-trips, and changes no other record.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod shared;
use shared::*;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let id = IDS[usize::from(selector) % IDS.len()];
    let e = seeded();
    let subjects = subjects();
    let before = snapshot(&e, &subjects, MIDNIGHT);
    let records = e.records();
    match e.apply_update_json(id, body, MIDNIGHT) {
        Err(err) => {
            assert!(matches!(err.code().as_u32(), 4000 | 4200), "{err}");
            assert_eq!(
                snapshot(&e, &subjects, MIDNIGHT),
                before,
                "state changed after {err}"
            );
        }
        Ok(info) => {
            assert_eq!(e.get(id).as_ref(), Some(&info));
            assert_round_trips(&info);
            // The other records are as they were.
            for r in records.iter().filter(|r| r.benefit_id().as_str() != id) {
                assert_eq!(e.get(r.benefit_id().as_str()).as_ref(), Some(r));
            }
        }
    }
});
