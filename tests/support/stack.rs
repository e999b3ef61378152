//! Deploys `deploy/imagetag.yaml` into moto, then completes what moto's
//! CloudFormation leaves out.
//!
//! moto reports CREATE_COMPLETE but silently skips `AWS::SNS::Subscription`,
//! `AWS::SNS::TopicPolicy`, `AWS::SQS::QueuePolicy` and a bucket's
//! `NotificationConfiguration`. Those parts are read from the same template,
//! their intrinsic functions resolved against the created stack, and applied
//! through the regular service APIs, so the wiring is written only once: in
//! the template.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_cloudformation::error::DisplayErrorContext;
use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
use aws_sdk_s3::types::{
    Event, EventBridgeConfiguration, FilterRule, FilterRuleName, NotificationConfiguration,
    NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter, TopicConfiguration,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Map, Value as Json};

use super::moto::{ACCOUNT_ID, Moto, REGION, workspace_root};

const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// The template every test deploys.
pub fn template_path() -> PathBuf {
    workspace_root().join("deploy/imagetag.yaml")
}

/// The template parsed into JSON values (it uses no YAML tags).
pub fn load_template() -> Json {
    let path = template_path();
    let body =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_template(&body)
}

fn parse_template(body: &str) -> Json {
    serde_yaml::from_str(body).unwrap_or_else(|e| {
        panic!("deploy/imagetag.yaml is not plain YAML (long-form intrinsics only): {e}")
    })
}

/// A stack prefix unique within this process and across concurrent test
/// processes, valid as the template's `Prefix` (and so as a bucket name part).
pub fn unique_prefix(base: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "{base}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let valid = prefix.len() <= 30
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    assert!(
        valid,
        "prefix {prefix:?} must be at most 30 lowercase letters, digits and hyphens; use a shorter base"
    );
    prefix
}

/// A resource CloudFormation created.
#[derive(Debug, Clone)]
pub struct Resource {
    pub resource_type: String,
    pub physical_id: String,
}

/// A created and fully wired stack.
#[derive(Debug)]
pub struct Stack {
    pub name: String,
    pub prefix: String,
    pub outputs: HashMap<String, String>,
    /// By logical id. Resources moto skipped are absent.
    pub resources: HashMap<String, Resource>,
}

impl Stack {
    /// An output's value; panics naming the outputs there are.
    pub fn output(&self, name: &str) -> &str {
        match self.outputs.get(name) {
            Some(value) => value,
            None => {
                let mut names: Vec<_> = self.outputs.keys().collect();
                names.sort();
                panic!(
                    "stack {} has no output {name:?}; it has {names:?}",
                    self.name
                )
            }
        }
    }

    /// A resource's physical id; panics if the stack has no such resource.
    pub fn physical_id(&self, logical_id: &str) -> &str {
        match self.resources.get(logical_id) {
            Some(resource) => &resource.physical_id,
            None => panic!("stack {} has no resource {logical_id:?}", self.name),
        }
    }
}

/// Creates a stack named `prefix` from the template with `Prefix = prefix`
/// and `params`, waits for CREATE_COMPLETE, then applies the parts moto
/// skips (see the module docs).
pub async fn deploy(moto: &Moto, prefix: &str, params: &[(&str, &str)]) -> Stack {
    let path = template_path();
    let body =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let template = parse_template(&body);
    assert!(
        params.iter().all(|(key, _)| *key != "Prefix"),
        "pass the prefix as deploy's argument, not as a parameter"
    );
    let given: Vec<(&str, &str)> = [("Prefix", prefix)]
        .into_iter()
        .chain(params.iter().copied())
        .collect();
    let parameters = parameter_values(&template, &given);

    let cfn = moto.cloudformation_client().await;
    let created = cfn
        .create_stack()
        .stack_name(prefix)
        .template_body(&body)
        .set_parameters(Some(
            given
                .iter()
                .map(|(key, value)| {
                    Parameter::builder()
                        .parameter_key(*key)
                        .parameter_value(*value)
                        .build()
                })
                .collect(),
        ))
        .capabilities(Capability::CapabilityNamedIam)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateStack {prefix} failed: {}", DisplayErrorContext(&e)));
    let stack_id = created.stack_id().unwrap_or(prefix).to_owned();

    let described = wait_for_create(&cfn, prefix).await;
    let outputs = described
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect();

    let listed = cfn
        .describe_stack_resources()
        .stack_name(prefix)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "DescribeStackResources {prefix} failed: {}",
                DisplayErrorContext(&e)
            )
        });
    // moto also lists, without logical or physical ids, the resources it
    // skipped (applied below) and those whose condition is false.
    let resources: HashMap<String, Resource> = listed
        .stack_resources()
        .iter()
        .filter_map(|r| {
            Some((
                r.logical_resource_id()?.to_owned(),
                Resource {
                    resource_type: r.resource_type()?.to_owned(),
                    physical_id: r.physical_resource_id()?.to_owned(),
                },
            ))
        })
        .collect();

    let resolver = Resolver {
        template: &template,
        stack_name: prefix.to_owned(),
        stack_id,
        parameters,
        resources: &resources,
        attributes: fetch_attributes(moto, &resources).await,
    };
    wire(moto, &template, &resolver).await;

    Stack {
        name: prefix.to_owned(),
        prefix: prefix.to_owned(),
        outputs,
        resources,
    }
}

/// Every declared parameter's value: the given one, else the default.
fn parameter_values(template: &Json, given: &[(&str, &str)]) -> HashMap<String, String> {
    let declared = template
        .get("Parameters")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    for (key, _) in given {
        assert!(
            declared.contains_key(*key),
            "parameter {key:?} is not declared in the template"
        );
    }
    declared
        .iter()
        .filter_map(|(name, declaration)| {
            let value = given
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| (*value).to_owned())
                .or_else(|| declaration.get("Default").map(text_form))?;
            Some((name.clone(), value))
        })
        .collect()
}

async fn wait_for_create(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
) -> aws_sdk_cloudformation::types::Stack {
    let deadline = Instant::now() + CREATE_TIMEOUT;
    loop {
        let described = cfn
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("DescribeStacks {name} failed: {}", DisplayErrorContext(&e))
            });
        let Some(stack) = described.stacks().first() else {
            panic!("DescribeStacks {name} returned no stack");
        };
        let status = stack.stack_status().map_or("(none)", StackStatus::as_str);
        match stack.stack_status() {
            Some(StackStatus::CreateComplete) => return stack.clone(),
            Some(StackStatus::CreateInProgress) | None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => panic!(
                "stack {name} is {status} ({}); events:\n{}",
                stack.stack_status_reason().unwrap_or("no reason given"),
                stack_events(cfn, name).await
            ),
        }
    }
}

async fn stack_events(cfn: &aws_sdk_cloudformation::Client, name: &str) -> String {
    match cfn.describe_stack_events().stack_name(name).send().await {
        Ok(out) => out
            .stack_events()
            .iter()
            .map(|e| {
                format!(
                    "  {} {} {}: {}",
                    e.logical_resource_id().unwrap_or("?"),
                    e.resource_type().unwrap_or("?"),
                    e.resource_status().map_or("?", |s| s.as_str()),
                    e.resource_status_reason().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!(
            "  (DescribeStackEvents failed: {})",
            DisplayErrorContext(&e)
        ),
    }
}

/// `Fn::GetAtt` values of the created resources the wiring can refer to.
async fn fetch_attributes(
    moto: &Moto,
    resources: &HashMap<String, Resource>,
) -> HashMap<String, BTreeMap<&'static str, String>> {
    let sqs = moto.sqs_client().await;
    let mut attributes = HashMap::new();
    for (logical_id, resource) in resources {
        let id = &resource.physical_id;
        let known = match resource.resource_type.as_str() {
            "AWS::SQS::Queue" => {
                let got = sqs
                    .get_queue_attributes()
                    .queue_url(id)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "GetQueueAttributes {id} failed: {}",
                            DisplayErrorContext(&e)
                        )
                    });
                let Some(arn) = got
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                else {
                    panic!("GetQueueAttributes {id} returned no QueueArn");
                };
                BTreeMap::from([
                    ("Arn", arn.clone()),
                    ("QueueName", last_arn_part(arn)),
                    ("QueueUrl", id.clone()),
                ])
            }
            "AWS::SNS::Topic" => {
                BTreeMap::from([("TopicArn", id.clone()), ("TopicName", last_arn_part(id))])
            }
            "AWS::S3::Bucket" => BTreeMap::from([("Arn", format!("arn:aws:s3:::{id}"))]),
            _ => continue,
        };
        attributes.insert(logical_id.clone(), known);
    }
    attributes
}

fn last_arn_part(arn: &str) -> String {
    arn.rsplit(':').next().unwrap_or(arn).to_owned()
}

/// Applies the resources and properties moto's CloudFormation skips.
async fn wire(moto: &Moto, template: &Json, resolver: &Resolver<'_>) {
    let Some(resources) = template.get("Resources").and_then(Json::as_object) else {
        panic!("the template has no Resources");
    };
    let sns = moto.sns_client().await;
    let sqs = moto.sqs_client().await;
    let s3 = moto.s3_client().await;
    // Policies first, as the template's DependsOn orders them: the
    // subscription and the bucket notifications rely on them.
    let order = [
        "AWS::SNS::TopicPolicy",
        "AWS::SQS::QueuePolicy",
        "AWS::SNS::Subscription",
        "AWS::S3::Bucket",
    ];
    for kind in order {
        for (logical_id, resource) in resources {
            if resource.get("Type").and_then(Json::as_str) != Some(kind) {
                continue;
            }
            if let Some(condition) = resource.get("Condition") {
                let name = condition.as_str().unwrap_or_else(|| {
                    panic!("{logical_id}: Condition must name a condition, got {condition}")
                });
                if !resolver.named_condition(name) {
                    continue;
                }
            }
            let properties = resource.get("Properties").cloned().unwrap_or_default();
            let context = format!("{logical_id} ({kind})");
            match kind {
                "AWS::SNS::TopicPolicy" => {
                    let resolved = resolver.resolve_value(&properties);
                    let props = fields(&resolved, &["Topics", "PolicyDocument"], &context);
                    let policy = text_form(required(props, "PolicyDocument", &context));
                    for topic in string_list(required(props, "Topics", &context), &context) {
                        sns.set_topic_attributes()
                            .topic_arn(&topic)
                            .attribute_name("Policy")
                            .attribute_value(&policy)
                            .send()
                            .await
                            .unwrap_or_else(|e| {
                                panic!(
                                    "{context}: SetTopicAttributes failed: {}",
                                    DisplayErrorContext(&e)
                                )
                            });
                    }
                }
                "AWS::SQS::QueuePolicy" => {
                    let resolved = resolver.resolve_value(&properties);
                    let props = fields(&resolved, &["Queues", "PolicyDocument"], &context);
                    let policy = text_form(required(props, "PolicyDocument", &context));
                    for queue in string_list(required(props, "Queues", &context), &context) {
                        sqs.set_queue_attributes()
                            .queue_url(&queue)
                            .attributes(QueueAttributeName::Policy, &policy)
                            .send()
                            .await
                            .unwrap_or_else(|e| {
                                panic!(
                                    "{context}: SetQueueAttributes failed: {}",
                                    DisplayErrorContext(&e)
                                )
                            });
                    }
                }
                "AWS::SNS::Subscription" => {
                    subscribe(&sns, &resolver.resolve_value(&properties), &context).await;
                }
                "AWS::S3::Bucket" => {
                    let Some(notifications) = properties.get("NotificationConfiguration") else {
                        continue;
                    };
                    let bucket = resolver.resource(logical_id).physical_id.clone();
                    let configuration = notification_configuration(
                        &resolver.resolve_value(notifications),
                        &context,
                    );
                    s3.put_bucket_notification_configuration()
                        .bucket(&bucket)
                        .notification_configuration(configuration)
                        .send()
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "{context}: PutBucketNotificationConfiguration failed: {}",
                                DisplayErrorContext(&e)
                            )
                        });
                }
                _ => unreachable!("every kind in `order` is handled"),
            }
        }
    }
}

/// Subscription properties that are subscription attributes in the API.
const SUBSCRIPTION_ATTRIBUTES: &[&str] = &[
    "DeliveryPolicy",
    "FilterPolicy",
    "FilterPolicyScope",
    "RawMessageDelivery",
    "RedrivePolicy",
    "ReplayPolicy",
    "SubscriptionRoleArn",
];

async fn subscribe(sns: &aws_sdk_sns::Client, properties: &Json, context: &str) {
    let allowed: Vec<&str> = ["Protocol", "TopicArn", "Endpoint"]
        .into_iter()
        .chain(SUBSCRIPTION_ATTRIBUTES.iter().copied())
        .collect();
    let props = fields(properties, &allowed, context);
    let mut request = sns
        .subscribe()
        .topic_arn(string(required(props, "TopicArn", context), context))
        .protocol(string(required(props, "Protocol", context), context))
        .return_subscription_arn(true);
    if let Some(endpoint) = props.get("Endpoint") {
        request = request.endpoint(string(endpoint, context));
    }
    for name in SUBSCRIPTION_ATTRIBUTES {
        if let Some(value) = props.get(*name) {
            request = request.attributes(*name, text_form(value));
        }
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{context}: Subscribe failed: {}", DisplayErrorContext(&e)));
}

/// Translates CloudFormation's `NotificationConfiguration` (one `Event` per
/// entry, `Filter.S3Key.Rules`) into the S3 API's shape.
fn notification_configuration(config: &Json, context: &str) -> NotificationConfiguration {
    let config = fields(
        config,
        &[
            "TopicConfigurations",
            "QueueConfigurations",
            "EventBridgeConfiguration",
        ],
        context,
    );
    let mut builder = NotificationConfiguration::builder();
    for entry in config
        .get("TopicConfigurations")
        .map(list)
        .unwrap_or_default()
    {
        let entry = fields(entry, &["Event", "Topic", "Filter"], context);
        let topic = TopicConfiguration::builder()
            .topic_arn(string(required(entry, "Topic", context), context))
            .events(Event::from(
                string(required(entry, "Event", context), context).as_str(),
            ))
            .set_filter(entry.get("Filter").map(|f| key_filter(f, context)))
            .build()
            .unwrap_or_else(|e| panic!("{context}: invalid topic configuration: {e}"));
        builder = builder.topic_configurations(topic);
    }
    for entry in config
        .get("QueueConfigurations")
        .map(list)
        .unwrap_or_default()
    {
        let entry = fields(entry, &["Event", "Queue", "Filter"], context);
        let queue = QueueConfiguration::builder()
            .queue_arn(string(required(entry, "Queue", context), context))
            .events(Event::from(
                string(required(entry, "Event", context), context).as_str(),
            ))
            .set_filter(entry.get("Filter").map(|f| key_filter(f, context)))
            .build()
            .unwrap_or_else(|e| panic!("{context}: invalid queue configuration: {e}"));
        builder = builder.queue_configurations(queue);
    }
    if let Some(event_bridge) = config.get("EventBridgeConfiguration") {
        let event_bridge = fields(event_bridge, &["EventBridgeEnabled"], context);
        if event_bridge.get("EventBridgeEnabled") == Some(&Json::Bool(true)) {
            builder =
                builder.event_bridge_configuration(EventBridgeConfiguration::builder().build());
        }
    }
    builder.build()
}

fn key_filter(filter: &Json, context: &str) -> NotificationConfigurationFilter {
    let filter = fields(filter, &["S3Key"], context);
    let s3_key = fields(required(filter, "S3Key", context), &["Rules"], context);
    let mut key = S3KeyFilter::builder();
    for rule in list(required(s3_key, "Rules", context)) {
        let rule = fields(rule, &["Name", "Value"], context);
        key = key.filter_rules(
            FilterRule::builder()
                .name(FilterRuleName::from(
                    string(required(rule, "Name", context), context).as_str(),
                ))
                .value(string(required(rule, "Value", context), context))
                .build(),
        );
    }
    NotificationConfigurationFilter::builder()
        .key(key.build())
        .build()
}

/// Resolves intrinsic functions against a created stack, for the constructs
/// the wiring uses; anything else panics naming the construct.
struct Resolver<'a> {
    template: &'a Json,
    stack_name: String,
    stack_id: String,
    parameters: HashMap<String, String>,
    resources: &'a HashMap<String, Resource>,
    attributes: HashMap<String, BTreeMap<&'static str, String>>,
}

impl Resolver<'_> {
    /// Resolves a value that must not vanish through `AWS::NoValue`.
    fn resolve_value(&self, value: &Json) -> Json {
        self.resolve(value)
            .unwrap_or_else(|| panic!("{value} resolves to AWS::NoValue"))
    }

    /// `None` stands for `AWS::NoValue`, which removes the enclosing entry.
    fn resolve(&self, value: &Json) -> Option<Json> {
        match value {
            Json::Object(map) => {
                if let Some((name, argument)) = single_entry(map)
                    && (name == "Ref" || name.starts_with("Fn::"))
                {
                    return self.intrinsic(name, argument);
                }
                Some(Json::Object(
                    map.iter()
                        .filter_map(|(k, v)| Some((k.clone(), self.resolve(v)?)))
                        .collect(),
                ))
            }
            Json::Array(items) => Some(Json::Array(
                items.iter().filter_map(|v| self.resolve(v)).collect(),
            )),
            scalar => Some(scalar.clone()),
        }
    }

    fn intrinsic(&self, name: &str, argument: &Json) -> Option<Json> {
        let context = format!("{{\"{name}\": {argument}}}");
        match name {
            "Ref" => self
                .reference(&string(argument, &context))
                .map(Json::String),
            "Fn::GetAtt" => {
                let (resource, attribute) = match argument {
                    Json::String(dotted) => dotted
                        .split_once('.')
                        .map(|(r, a)| (r.to_owned(), a.to_owned()))
                        .unwrap_or_else(|| panic!("{context}: expected Resource.Attribute")),
                    Json::Array(parts) if parts.len() == 2 => {
                        (string(&parts[0], &context), string(&parts[1], &context))
                    }
                    _ => panic!("{context}: expected [Resource, Attribute]"),
                };
                Some(Json::String(self.attribute(&resource, &attribute)))
            }
            "Fn::Sub" => {
                let (text, variables) = match argument {
                    Json::String(text) => (text.clone(), HashMap::new()),
                    Json::Array(parts) if parts.len() == 2 => {
                        let variables = parts[1]
                            .as_object()
                            .unwrap_or_else(|| panic!("{context}: variables must be a mapping"))
                            .iter()
                            .map(|(k, v)| (k.clone(), self.string_value(v, &context)))
                            .collect();
                        (string(&parts[0], &context), variables)
                    }
                    _ => panic!("{context}: expected a string or [string, variables]"),
                };
                Some(Json::String(self.substitute(&text, &variables, &context)))
            }
            "Fn::Join" => {
                let [delimiter, items] = pair(argument, &context);
                let items = self.resolve_value(items);
                let joined: Vec<String> = list(&items).into_iter().map(text_form).collect();
                Some(Json::String(joined.join(&string(delimiter, &context))))
            }
            "Fn::Split" => {
                let [delimiter, text] = pair(argument, &context);
                let delimiter = string(delimiter, &context);
                let text = self.string_value(text, &context);
                Some(Json::Array(
                    text.split(delimiter.as_str())
                        .map(|part| Json::String(part.to_owned()))
                        .collect(),
                ))
            }
            "Fn::Select" => {
                let [index, items] = pair(argument, &context);
                let index: usize = self
                    .string_value(index, &context)
                    .parse()
                    .unwrap_or_else(|e| panic!("{context}: bad index: {e}"));
                let items = self.resolve_value(items);
                let selected = list(&items)
                    .get(index)
                    .map(|item| (*item).clone())
                    .unwrap_or_else(|| panic!("{context}: index {index} out of range"));
                Some(selected)
            }
            "Fn::If" => match argument.as_array().map(Vec::as_slice) {
                Some([condition, when_true, when_false]) => {
                    if self.named_condition(&string(condition, &context)) {
                        self.resolve(when_true)
                    } else {
                        self.resolve(when_false)
                    }
                }
                _ => panic!("{context}: expected [Condition, ValueIfTrue, ValueIfFalse]"),
            },
            _ => panic!("the test harness cannot resolve {context}; extend tests/support/stack.rs"),
        }
    }

    fn string_value(&self, value: &Json, context: &str) -> String {
        let resolved = self.resolve(value);
        match resolved {
            Some(Json::String(s)) => s,
            Some(n @ Json::Number(_)) => n.to_string(),
            Some(other) => panic!("{context}: expected a string, got {other}"),
            None => panic!("{context}: AWS::NoValue where a string is needed"),
        }
    }

    fn reference(&self, name: &str) -> Option<String> {
        let pseudo = match name {
            "AWS::NoValue" => return None,
            "AWS::AccountId" => ACCOUNT_ID,
            "AWS::Region" => REGION,
            "AWS::Partition" => "aws",
            "AWS::URLSuffix" => "amazonaws.com",
            "AWS::StackName" => &self.stack_name,
            "AWS::StackId" => &self.stack_id,
            _ => {
                if let Some(value) = self.parameters.get(name) {
                    return Some(value.clone());
                }
                return Some(self.resource(name).physical_id.clone());
            }
        };
        Some(pseudo.to_owned())
    }

    fn resource(&self, logical_id: &str) -> &Resource {
        self.resources.get(logical_id).unwrap_or_else(|| {
            panic!(
                "Ref {logical_id}: neither a parameter nor a resource the stack created \
                 (the harness cannot refer to resources moto skipped)"
            )
        })
    }

    fn attribute(&self, resource: &str, attribute: &str) -> String {
        let known = self.attributes.get(resource);
        match known.and_then(|a| a.get(attribute)) {
            Some(value) => value.clone(),
            None => panic!(
                "Fn::GetAtt {resource}.{attribute}: unknown to the test harness (it knows {:?} \
                 for that resource); extend fetch_attributes in tests/support/stack.rs",
                known
                    .map(|a| a.keys().collect::<Vec<_>>())
                    .unwrap_or_default()
            ),
        }
    }

    /// `${Name}`, `${Resource.Attribute}` and `${!Literal}` in an `Fn::Sub` string.
    fn substitute(&self, text: &str, variables: &HashMap<String, String>, context: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                panic!("{context}: unterminated ${{ in {text:?}");
            };
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(value) = variables.get(name) {
                out.push_str(value);
            } else if let Some((resource, attribute)) = name.split_once('.') {
                out.push_str(&self.attribute(resource, attribute));
            } else {
                let value = self
                    .reference(name)
                    .unwrap_or_else(|| panic!("{context}: AWS::NoValue inside Fn::Sub"));
                out.push_str(&value);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn named_condition(&self, name: &str) -> bool {
        let Some(expression) = self.template.get("Conditions").and_then(|c| c.get(name)) else {
            panic!("condition {name:?} is not declared in the template");
        };
        self.condition(expression)
    }

    fn condition(&self, expression: &Json) -> bool {
        let Some((operator, argument)) = expression.as_object().and_then(single_entry) else {
            panic!("cannot evaluate condition {expression}");
        };
        let operands = || {
            argument
                .as_array()
                .unwrap_or_else(|| panic!("{operator} expects a list, got {argument}"))
        };
        match operator.as_str() {
            "Condition" => self.named_condition(&string(argument, operator)),
            "Fn::Not" => match operands().as_slice() {
                [only] => !self.condition(only),
                _ => panic!("Fn::Not expects one condition, got {argument}"),
            },
            "Fn::And" => operands().iter().all(|c| self.condition(c)),
            "Fn::Or" => operands().iter().any(|c| self.condition(c)),
            "Fn::Equals" => {
                let [left, right] = pair(argument, operator);
                text_form(&self.resolve_value(left)) == text_form(&self.resolve_value(right))
            }
            _ => panic!("the test harness cannot evaluate condition {expression}"),
        }
    }
}

fn single_entry(map: &Map<String, Json>) -> Option<(&String, &Json)> {
    let mut entries = map.iter();
    match (entries.next(), entries.next()) {
        (Some(entry), None) => Some(entry),
        _ => None,
    }
}

/// The object's entries, panicking on keys the harness does not apply (so
/// that a new template property is not silently left out of the tests).
fn fields<'v>(value: &'v Json, allowed: &[&str], context: &str) -> &'v Map<String, Json> {
    let Some(map) = value.as_object() else {
        panic!("{context}: expected a mapping, got {value}");
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        panic!(
            "{context}: the test harness does not apply property {unknown:?} (knows {allowed:?}); \
             extend tests/support/stack.rs"
        );
    }
    map
}

fn required<'v>(map: &'v Map<String, Json>, key: &str, context: &str) -> &'v Json {
    map.get(key)
        .unwrap_or_else(|| panic!("{context}: missing required property {key}"))
}

fn list(value: &Json) -> Vec<&Json> {
    match value {
        Json::Array(items) => items.iter().collect(),
        other => panic!("expected a list, got {other}"),
    }
}

fn pair<'v>(value: &'v Json, context: &str) -> [&'v Json; 2] {
    match value.as_array().map(Vec::as_slice) {
        Some([first, second]) => [first, second],
        _ => panic!("{context}: expected a list of two, got {value}"),
    }
}

fn string(value: &Json, context: &str) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{context}: expected a string, got {value}"))
        .to_owned()
}

fn string_list(value: &Json, context: &str) -> Vec<String> {
    list(value)
        .into_iter()
        .map(|v| string(v, context))
        .collect()
}

/// Strings as they are, anything else as JSON: `5`, `true`, and policy
/// documents, which the template may give as mappings or as JSON strings.
fn text_form(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}
