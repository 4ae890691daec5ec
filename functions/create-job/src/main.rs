//! create-job: wiring only. The handler is `shared::handlers::create_job_invoke`; it reads a
//! direct invoke payload or an EventBridge event (create, pause, resume, cancel).

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::handlers::{create_job_invoke, AwsDeps};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init();
    let deps = AwsDeps::from_env().await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| async {
        create_job_invoke(&deps, event.payload).await.map_err(Error::from)
    }))
    .await
}
