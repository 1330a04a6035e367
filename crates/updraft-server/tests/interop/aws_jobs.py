"""A device built on AWS's own IoT device SDK for Python (awsiotsdk's jobs client over awscrt's
MQTT 3.1.1 connection, plain TCP as the lower-level API allows), pointed at Updraft.

Usage: aws_jobs.py HOST PORT THING TOKEN [CA_PEM CERT_PEM KEY_PEM]
With the three PEM files it connects over TLS with that client certificate (mutual TLS, as
devices connect to AWS IoT) and sends no password.
Subscribes to notify-next and prints "ready"; waits for the notification of a new job; walks
start-next -> update IN_PROGRESS -> update SUCCEEDED, each answered on its accepted topic; prints
one JSON line with what it saw and exits 0. Any rejection or a missing answer exits non-zero.
"""
import json
import sys
import threading

from awscrt import io, mqtt
from awsiot import iotjobs

host, port, thing, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
tls_files = sys.argv[5:8]
WAIT = 60

bootstrap = io.ClientBootstrap.get_or_create_static_default()
if tls_files:
    ca, cert, key = tls_files
    options = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
    options.override_default_trust_store_from_path(None, ca)
    client = mqtt.Client(bootstrap, io.ClientTlsContext(options))
    credentials = {}
else:
    client = mqtt.Client(bootstrap, None)  # no TLS context: plain TCP
    credentials = {"username": thing, "password": token}
connection = mqtt.Connection(
    client=client, host_name=host, port=port, client_id=thing, clean_session=True,
    keep_alive_secs=30, **credentials)
connection.connect().result(WAIT)
jobs = iotjobs.IotJobsClient(connection)
seen = {}
notified = threading.Event()
started = threading.Event()
updated = threading.Event()
failures = []


def on_next_changed(event):
    if event.execution is not None:
        seen["notified_job"] = event.execution.job_id
        notified.set()


def on_started(response):
    seen["started"] = {
        "job_id": response.execution.job_id,
        "status": response.execution.status,
        "version": response.execution.version_number,
        "document": response.execution.job_document,
    }
    started.set()


def on_updated(response):
    seen.setdefault("updates", []).append(response.execution_state.status if response.execution_state else None)
    updated.set()


def on_rejected(error):
    failures.append({"code": error.code, "message": error.message})
    started.set()
    updated.set()


Q1 = mqtt.QoS.AT_LEAST_ONCE
future, _ = jobs.subscribe_to_next_job_execution_changed_events(
    iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), Q1, on_next_changed)
future.result(WAIT)
for subscribe, callback in [
    (jobs.subscribe_to_start_next_pending_job_execution_accepted, on_started),
    (jobs.subscribe_to_start_next_pending_job_execution_rejected, on_rejected),
]:
    subscribe(iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), Q1,
              callback)[0].result(WAIT)
print("ready", flush=True)

if not notified.wait(WAIT):
    sys.exit("no notify-next arrived")
jobs.publish_start_next_pending_job_execution(
    iotjobs.StartNextPendingJobExecutionRequest(
        thing_name=thing, client_token="sdk-1", status_details={"step": "starting"}), Q1).result(WAIT)
if not started.wait(WAIT) or failures:
    sys.exit(f"start-next failed: {failures}")
job_id = seen["started"]["job_id"]
for subscribe, callback in [
    (jobs.subscribe_to_update_job_execution_accepted, on_updated),
    (jobs.subscribe_to_update_job_execution_rejected, on_rejected),
]:
    subscribe(iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id=job_id), Q1,
              callback)[0].result(WAIT)
for status, details in [
    (iotjobs.JobStatus.IN_PROGRESS, {"self_test": "ready"}),
    (iotjobs.JobStatus.SUCCEEDED, {"self_test": "accepted"}),
]:
    updated.clear()
    jobs.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
        thing_name=thing, job_id=job_id, status=status, status_details=details,
        include_job_execution_state=True), Q1).result(WAIT)
    if not updated.wait(WAIT) or failures:
        sys.exit(f"update to {status} failed: {failures}")
connection.disconnect().result(WAIT)
print(json.dumps(seen), flush=True)
