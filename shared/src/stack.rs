//! The deployment's CloudFormation stack: deploy the template, read its outputs.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};

use crate::error::{classify, AwsError};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("stack {0:?} was not found; deploy it first (make deploy-local, or sam deploy)")]
    NotFound(String),
    #[error("stack {stack:?} is {status}: {reason}")]
    Failed { stack: String, status: String, reason: String },
    #[error("stack {0:?} did not settle in time")]
    Timeout(String),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// CloudFormation answers a DescribeStacks of an unknown stack with a ValidationError.
fn is_missing<E: aws_sdk_cloudformation::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_cloudformation::error::SdkError<E, R>,
) -> bool {
    e.as_service_error().and_then(|s| s.message()).is_some_and(|m| m.contains("does not exist"))
}

/// The stack's outputs, `OutputKey` → `OutputValue`.
pub async fn outputs(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Result<HashMap<String, String>, StackError> {
    let out = match cfn.describe_stacks().stack_name(stack).send().await {
        Ok(out) => out,
        Err(e) if is_missing(&e) => return Err(StackError::NotFound(stack.into())),
        Err(e) => return Err(classify(format!("DescribeStacks {stack}"), e).into()),
    };
    let s = out.stacks().first().ok_or_else(|| StackError::NotFound(stack.into()))?;
    Ok(s.outputs().iter().filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string()))).collect())
}

async fn status(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
) -> Result<Option<(StackStatus, String)>, StackError> {
    match cfn.describe_stacks().stack_name(stack).send().await {
        Ok(out) => Ok(out
            .stacks()
            .first()
            .and_then(|s| Some((s.stack_status()?.clone(), s.stack_status_reason().unwrap_or_default().to_string())))),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(classify(format!("DescribeStacks {stack}"), e).into()),
    }
}

async fn wait(cfn: &aws_sdk_cloudformation::Client, stack: &str, want: StackStatus) -> Result<(), StackError> {
    for _ in 0..600 {
        match status(cfn, stack).await? {
            None if want == StackStatus::DeleteComplete => return Ok(()),
            None => return Err(StackError::NotFound(stack.into())),
            Some((s, _)) if s == want => return Ok(()),
            Some((s, reason)) if !s.as_str().ends_with("_IN_PROGRESS") => {
                return Err(StackError::Failed { stack: stack.into(), status: s.as_str().into(), reason })
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    Err(StackError::Timeout(stack.into()))
}

/// Create the stack from `template`, or update it if it exists; returns its outputs.
pub async fn deploy(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
    template: &str,
    parameters: &[(String, String)],
) -> Result<HashMap<String, String>, StackError> {
    let params: Vec<Parameter> =
        parameters.iter().map(|(k, v)| Parameter::builder().parameter_key(k).parameter_value(v).build()).collect();
    let caps = [Capability::CapabilityIam, Capability::CapabilityNamedIam, Capability::CapabilityAutoExpand];
    match status(cfn, stack).await? {
        None => {
            cfn.create_stack()
                .stack_name(stack)
                .template_body(template)
                .set_parameters(Some(params))
                .set_capabilities(Some(caps.to_vec()))
                .send()
                .await
                .map_err(|e| classify(format!("CreateStack {stack}"), e))?;
            wait(cfn, stack, StackStatus::CreateComplete).await?;
        }
        Some(_) => {
            let r = cfn
                .update_stack()
                .stack_name(stack)
                .template_body(template)
                .set_parameters(Some(params))
                .set_capabilities(Some(caps.to_vec()))
                .send()
                .await;
            match r {
                Ok(_) => wait(cfn, stack, StackStatus::UpdateComplete).await?,
                Err(e)
                    if e.as_service_error()
                        .and_then(|s| s.meta().message())
                        .is_some_and(|m| m.contains("No updates")) => {}
                Err(e) => return Err(classify(format!("UpdateStack {stack}"), e).into()),
            }
        }
    }
    outputs(cfn, stack).await
}

/// Delete the stack and wait until it is gone.
pub async fn delete(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Result<(), StackError> {
    cfn.delete_stack().stack_name(stack).send().await.map_err(|e| classify(format!("DeleteStack {stack}"), e))?;
    wait(cfn, stack, StackStatus::DeleteComplete).await
}

/// The CloudFormation client type, for callers that do not depend on the SDK crate.
pub type CfnClient = aws_sdk_cloudformation::Client;
