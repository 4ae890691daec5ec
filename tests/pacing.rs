//! The write-rate budget on LocalStack, alone in its own test binary: a rate measured while
//! other suites' copies (or a second LocalStack starting) share the machine's two cores would
//! measure the machine, not the budget.

use anyhow::Result;
use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType as T};
use shared::handlers::{create_job, CreateJobRequest};
use shared::model::{Item, JobStatus};
use tests::{assert_same_items, create_table, put_items, request, runner_opts, unique, wait_final, World};

#[tokio::test]
async fn a_write_rate_budget_of_500_items_per_second_holds_over_a_20000_item_copy() -> Result<()> {
    let w = World::new("budget").await?;
    let (src, dst) = (unique("budget-src"), unique("budget-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    // Small items: the copy of 20,000 must be well within what LocalStack serves on two cores
    // (about 500 items/s for ~800-byte items with debug-built tests), or the test would measure
    // LocalStack, not the budget.
    let small = |i: u64| {
        Item::from([
            ("pk".to_string(), AttributeValue::S(format!("k-{i:05}"))),
            ("n".to_string(), AttributeValue::N(i.to_string())),
        ])
    };
    put_items(&w.ddb, &src, (0..20_000).map(small).collect(), 16).await?;
    let runner = w.start_runner(runner_opts());
    let req = CreateJobRequest { max_write_rate: Some(500), ..request("budget", &src, &dst) };
    create_job(&w.deps, req).await?;
    let done = wait_final(&w, "budget").await?;
    runner.stop().await;
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 20_000), "{:?}", done.error);
    // The copy phase, from the job's own timestamps: Running to the verification's start.
    let copy_ms = (done.verify_started_at.unwrap() - done.started_at.unwrap()).num_milliseconds() as f64;
    let verify_ms = (done.completed_at.unwrap() - done.verify_started_at.unwrap()).num_milliseconds() as f64;
    let v = done.verification.clone().expect("verified");
    assert!(v.matched() && v.source.items == 20_000, "{v:?}");
    println!(
        "verification: {} + {} items read in {:.1} s ({:.0} items/s, paced by the same budget)",
        v.source.items,
        v.target.items,
        verify_ms / 1000.0,
        (v.source.items + v.target.items) as f64 * 1000.0 / verify_ms
    );
    let rate = done.items_copied as f64 * 1000.0 / copy_ms;
    println!("budget 500 items/s: measured {rate:.0} items/s over {:.1} s", copy_ms / 1000.0);
    assert!((0.85..=1.15).contains(&(rate / 500.0)), "measured {rate:.0} items/s against a budget of 500");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 20_000);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}
