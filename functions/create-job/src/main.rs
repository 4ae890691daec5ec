//! create-job: wiring only. The handler is `shared::handlers::create_job_entry`: requests-queue
//! batches, CloudFormation custom resource requests, direct invoke payloads and EventBridge
//! events (create, pause, resume, cancel).

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::handlers::{create_job_entry, AwsDeps};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init();
    let deps = AwsDeps::from_env().await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| create_job_entry(&deps, event.payload))).await
}
