//! create-job: wiring only. The handler is `shared::handlers::create_job_invoke`.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::handlers::{create_job_invoke, AwsDeps, CreateJobRequest};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init();
    let deps = AwsDeps::from_env().await?;
    run(service_fn(|event: LambdaEvent<CreateJobRequest>| async {
        create_job_invoke(&deps, event.payload).await.map_err(Error::from)
    }))
    .await
}
