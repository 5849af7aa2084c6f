//! The live lane's sink against real Tansu: records go to `live_topic` with the
//! `tidegate-live` header, and the topic it creates is compacted (read back with a
//! DescribeConfigs request, which rskafka has no client call for).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// `cleanup.policy` of `topic` as the broker describes it: one DescribeConfigs v0
/// request (API key 32) for all of the topic's configs on a fresh connection, encoded and
/// decoded here by hand. (Tansu 0.6 drops the connection when the request names keys, and
/// answers each config with two flags, `read_only` and `is_sensitive`, not v0's three.)
async fn cleanup_policy(broker: &str, topic: &str) -> Option<String> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::new();
    body.extend_from_slice(&32i16.to_be_bytes()); // api key: DescribeConfigs
    body.extend_from_slice(&0i16.to_be_bytes()); // api version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    string(&mut body, "tidegate-test");
    body.extend_from_slice(&1i32.to_be_bytes()); // one resource
    body.push(2); // resource type: topic
    string(&mut body, topic);
    body.extend_from_slice(&(-1i32).to_be_bytes()); // keys: null, all of them

    let mut stream = tokio::net::TcpStream::connect(broker)
        .await
        .expect("connect to the broker");
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .await
        .expect("write");
    stream.write_all(&body).await.expect("write");
    let len = stream.read_i32().await.expect("response length");
    let mut response = vec![0u8; usize::try_from(len).expect("positive length")];
    stream.read_exact(&mut response).await.expect("response");

    let mut r = Bytes::from(response);
    use bytes::Buf;
    let string = |r: &mut Bytes| -> Option<String> {
        let n = r.get_i16();
        (n >= 0).then(|| String::from_utf8(r.split_to(n as usize).to_vec()).expect("UTF-8 string"))
    };
    assert_eq!(r.get_i32(), 7, "correlation id");
    let _throttle = r.get_i32();
    assert_eq!(r.get_i32(), 1, "one result");
    let error = r.get_i16();
    let message = string(&mut r);
    assert_eq!(error, 0, "DescribeConfigs error {error}: {message:?}");
    let _resource_type = r.get_i8();
    assert_eq!(string(&mut r).as_deref(), Some(topic));
    let configs = r.get_i32();
    let mut policy = None;
    for _ in 0..configs {
        let name = string(&mut r);
        let value = string(&mut r);
        let _flags = r.split_to(2); // read_only, is_sensitive (see above)
        if name.as_deref() == Some("cleanup.policy") {
            policy = value;
        }
    }
    policy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_sink_sends_marked_records_to_a_compacted_live_topic() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "history");
    config.uplink.live_topic = "live".into();
    let mut sink = KafkaSink::live(&config, GATEWAY);
    let _counters = counters_of(&mut sink, EPOCH);
    let keys = ["wt-1/power", "wt-2/power", "wt-3/power", "wt-4/power"].map(String::from);
    let sent = batch(100, 8, &keys);
    sink.send(&items(&sent))
        .await
        .expect("live batch delivered");

    let read = read_partition(&tansu.addr(), "live", 0).await;
    assert_eq!(
        seqs_of(&read),
        (100..108).collect::<Vec<_>>(),
        "every reading, in order"
    );
    for r in &read {
        assert_eq!(header_str(r, HEADER_LIVE), "1", "the live marker");
        assert_eq!(
            header_str(r, HEADER_GATEWAY),
            GATEWAY,
            "the usual headers too"
        );
        assert_eq!(header_str(r, HEADER_EPOCH), EPOCH.to_string());
    }
    let client = testbed::kafka_client(&[tansu.addr()])
        .await
        .expect("a client");
    let topics: Vec<String> = client
        .list_topics()
        .await
        .expect("topics")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        !topics.contains(&"history".to_owned()),
        "the live sink leaves the history topic alone: {topics:?}"
    );
    assert_eq!(
        cleanup_policy(&tansu.addr(), "live").await.as_deref(),
        Some("compact"),
        "the live topic was created compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_sink_creates_its_topic_without_compaction_and_without_the_live_marker() {
    let tansu = Tansu::start().expect("tansu starts");
    let config = upstream(&tansu.addr(), "history");
    let mut sink = KafkaSink::new(&config, GATEWAY);
    let sent = batch(1, 3, &["dev/1".to_owned()]);
    sink.send(&items(&sent)).await.expect("delivered");
    let read = read_partition(&tansu.addr(), "history", 0).await;
    assert!(read.iter().all(|r| !r.headers.contains_key(HEADER_LIVE)));
    assert_ne!(
        cleanup_policy(&tansu.addr(), "history").await.as_deref(),
        Some("compact")
    );
}
