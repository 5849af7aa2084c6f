//! Failures sorted into retryable or fatal: the classification itself, and an unreachable
//! cluster, a missing topic and a broker that never answers.

use super::*;

#[test]
fn broker_errors_are_sorted_into_retryable_and_fatal() {
    let server = |protocol_error| {
        Failure::Kafka(KafkaError::ServerError {
            protocol_error,
            error_message: None,
            request: rskafka::client::error::RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: false,
        })
    };
    use ProtocolError as P;
    use Severity::{Fatal, Retryable};
    // (error, severity, whether the connection is rebuilt)
    for (error, severity, reconnect) in [
        (P::LeaderNotAvailable, Retryable, true),
        (P::NotLeaderOrFollower, Retryable, true),
        (P::UnknownTopicOrPartition, Retryable, true),
        (P::RequestTimedOut, Retryable, false),
        (P::NotEnoughReplicas, Retryable, false),
        (P::TopicAuthorizationFailed, Fatal, false),
        (P::MessageTooLarge, Fatal, false),
        (P::RecordListTooLarge, Fatal, false),
        (P::InvalidTopicException, Fatal, false),
        (P::UnsupportedVersion, Fatal, false),
        (P::UnsupportedCompressionType, Fatal, false),
    ] {
        let v = server(error).verdict();
        assert_eq!(
            (v.severity, v.reconnect),
            (severity, reconnect),
            "{error:?}"
        );
        assert_eq!(
            v.hint.is_some(),
            severity == Fatal,
            "{error:?}: a fatal error, and only that, tells the operator what to do"
        );
    }
    let refused = Failure::Kafka(KafkaError::Request(RequestError::IO(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    ))));
    assert_eq!(refused.verdict().severity, Severity::Retryable);
    assert!(refused.verdict().reconnect);
    assert_eq!(Failure::TimedOut.verdict().severity, Severity::Retryable);
    assert!(Failure::TimedOut.verdict().reconnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_retryable_within_the_request_timeout_and_the_same_sink_recovers()
{
    let port = testbed::free_port().expect("a free port");
    let address = format!("127.0.0.1:{port}");
    let mut config = upstream(&address, "late-cluster");
    config.request_timeout = Duration::from_secs(2);
    let mut sink = KafkaSink::new(&config, GATEWAY);
    let keys = vec!["dev/a".to_owned(), "dev/b".to_owned()];
    let records = batch(1, 10, &keys);

    let started = Instant::now();
    let err = sink
        .send(&items(&records))
        .await
        .expect_err("nothing listens yet");
    let took = started.elapsed();
    assert!(
        err.is_retryable(),
        "a cluster that is down is retryable: {err}"
    );
    assert!(
        took <= config.request_timeout + Duration::from_millis(500),
        "gave up after {took:?}, over request_timeout"
    );
    let text = err.to_string();
    for needle in ["test-cluster", address.as_str(), "late-cluster"] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }

    let tansu = Tansu::start_on(port).expect("tansu starts");
    sink.send(&items(&records))
        .await
        .expect("the same sink delivers once the cluster is up");
    let read = read_partition(&tansu.addr(), "late-cluster", 0).await;
    assert_eq!(seqs_of(&read), (1..=10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_without_create_topic_is_fatal_and_names_the_topic() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "never-created");
    config.create_topic = false;
    let mut sink = KafkaSink::new(&config, GATEWAY);
    let err = sink
        .send(&items(&batch(1, 3, &["dev/a".to_owned()])))
        .await
        .expect_err("the topic does not exist");
    assert!(
        matches!(err, SinkError::Fatal { .. }),
        "must be fatal: {err}"
    );
    let text = err.to_string();
    for needle in [
        "never-created",
        "test-cluster",
        "create_topic",
        &tansu.addr(),
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_times_out_as_retryable_within_the_request_timeout() {
    // Accepts TCP connections (the kernel completes the handshake) but never speaks Kafka.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let address = silent.local_addr().expect("local addr").to_string();
    let mut config = upstream(&address, "silent");
    config.request_timeout = Duration::from_millis(800);
    let mut sink = KafkaSink::new(&config, GATEWAY);

    let started = Instant::now();
    let err = sink
        .send(&items(&batch(1, 2, &["dev/a".to_owned()])))
        .await
        .expect_err("nothing answers");
    let took = started.elapsed();
    assert!(err.is_retryable(), "a silent broker is retryable: {err}");
    assert!(
        took <= config.request_timeout + Duration::from_millis(500),
        "gave up after {took:?}"
    );
    let text = err.to_string();
    assert!(text.contains("request_timeout"), "{text}");
    assert!(text.contains(&address), "{text}");
    drop(silent);
}
