"""Deploys deploy/imagetag.yaml into a moto server for the benchmark.

moto's CloudFormation creates the bucket, topic, queues and tables but
silently skips the SNS subscription and the bucket's notification
configuration; both are applied here through the regular APIs with the
values the template gives them (the test harness, tests/support/stack.rs,
does the same generically). Prints the stack's outputs as JSON.
"""

import argparse
import json
import sys
import time

import boto3


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    client = lambda name: session.client(name, endpoint_url=args.endpoint)  # noqa: E731
    cfn, sns, sqs, s3 = client("cloudformation"), client("sns"), client("sqs"), client("s3")

    with open(args.template) as f:
        body = f.read()
    cfn.create_stack(
        StackName=args.prefix,
        TemplateBody=body,
        Parameters=[{"ParameterKey": "Prefix", "ParameterValue": args.prefix}],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    deadline = time.time() + 120
    while True:
        stack = cfn.describe_stacks(StackName=args.prefix)["Stacks"][0]
        if stack["StackStatus"] == "CREATE_COMPLETE":
            break
        if stack["StackStatus"].endswith("FAILED") or time.time() > deadline:
            sys.exit(f"moto_stack.py: stack {args.prefix} ended as {stack['StackStatus']}")
        time.sleep(0.2)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    queue_arn = sqs.get_queue_attributes(
        QueueUrl=outputs["EventsQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    # As the template's EventsSubscription: SNS envelope kept.
    sns.subscribe(
        TopicArn=outputs["TopicArn"],
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "false"},
    )
    # As the template's NotificationConfiguration: every create and remove.
    s3.put_bucket_notification_configuration(
        Bucket=outputs["BucketName"],
        NotificationConfiguration={
            "TopicConfigurations": [
                {"TopicArn": outputs["TopicArn"], "Events": ["s3:ObjectCreated:*"]},
                {"TopicArn": outputs["TopicArn"], "Events": ["s3:ObjectRemoved:*"]},
            ]
        },
    )
    json.dump(outputs, sys.stdout)


if __name__ == "__main__":
    main()
