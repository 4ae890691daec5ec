//! The deployment's CloudFormation stack: deploy the template, read its outputs.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};

use crate::error::{classify, AwsError};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("stack {0:?} was not found in this account and region: deploy it first (on LocalStack `tablecopy local deploy`, on AWS `sam deploy --guided`; see the README), or name the deployed one with --stack-name")]
    NotFound(String),
    #[error("stack {stack:?} is {status}: {reason}")]
    Failed { stack: String, status: String, reason: String },
    #[error("the template cannot be deployed locally: {0}")]
    Template(String),
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

/// The parameters that make the template a local deployment: no functions (LocalStack without
/// Docker cannot run Lambda; the project's runner plays them), a control table that can be
/// deleted, and any table name. samconfig.toml's `local` environment sets the same.
pub const LOCAL_PARAMETERS: [(&str, &str); 3] =
    [("DeployFunctions", "false"), ("ControlTableDeletionProtection", "false"), ("TableNamePrefix", "*")];

/// [`deploy`] with [`LOCAL_PARAMETERS`], each overridden by `parameters` when given there.
pub async fn deploy_local(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
    template: &str,
    parameters: &[(String, String)],
) -> Result<HashMap<String, String>, StackError> {
    let mut all: Vec<(String, String)> = LOCAL_PARAMETERS
        .iter()
        .filter(|(k, _)| !parameters.iter().any(|(p, _)| p == k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.extend(parameters.iter().cloned());
    deploy(cfn, stack, &package_local(template)?, &all).await
}

/// The code location `sam build` reads (the workspace root, in the template's Globals).
const CODE_URI_LINE: &str = "    CodeUri: ..\n";
/// What a local deployment puts in its place: the SAM transform wants an S3 URI, and with
/// `DeployFunctions=false` nothing ever reads it.
const LOCAL_CODE_URI_LINE: &str = "    CodeUri: s3://tablecopy-local/functions-not-deployed.zip\n";

/// The template as a local deployment sends it: its one `CodeUri` line replaced by a
/// placeholder S3 URI, as `sam deploy` replaces it by the uploaded artifact's.
pub fn package_local(template: &str) -> Result<String, StackError> {
    match template.matches(CODE_URI_LINE).count() {
        1 => Ok(template.replace(CODE_URI_LINE, LOCAL_CODE_URI_LINE)),
        n => Err(StackError::Template(format!(
            "expected one {:?} line in the template's Globals, found {n}",
            CODE_URI_LINE.trim()
        ))),
    }
}

/// Delete the stack and wait until it is gone.
pub async fn delete(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Result<(), StackError> {
    cfn.delete_stack().stack_name(stack).send().await.map_err(|e| classify(format!("DeleteStack {stack}"), e))?;
    wait(cfn, stack, StackStatus::DeleteComplete).await
}

/// The CloudFormation client type, for callers that do not depend on the SDK crate.
pub type CfnClient = aws_sdk_cloudformation::Client;
