//! LwM2M clients on UDP: registrations per second, then an update driven to every client.

use super::*;

/// One LwM2M client: registers, then answers the server's requests until the process ends.
pub(super) async fn lwm2m_client(
    server: std::net::SocketAddr,
    endpoint: String,
    registered: Arc<AtomicUsize>,
    read: Arc<AtomicUsize>,
    told: Arc<AtomicUsize>,
) {
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut register = Packet::new();
    register.header.set_type(MessageType::Confirmable);
    register.header.code = MessageClass::Request(RequestType::Post);
    register.header.message_id = 1;
    register.set_token(vec![9]);
    register.add_option(CoapOption::UriPath, b"rd".to_vec());
    for query in [
        format!("ep={endpoint}"),
        "lt=86400".into(),
        "lwm2m=1.1".into(),
    ] {
        register.add_option(CoapOption::UriQuery, query.into_bytes());
    }
    register.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
    let bytes = register.to_bytes().unwrap();
    let mut buf = vec![0u8; 2048];
    // Register, resending as CoAP does until the answer comes.
    loop {
        socket.send_to(&bytes, server).await.unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            loop {
                let (len, _) = socket.recv_from(&mut buf).await.unwrap();
                let packet = Packet::from_bytes(&buf[..len]).unwrap();
                if packet.header.message_id == 1
                    && packet.header.code == MessageClass::Response(ResponseType::Created)
                {
                    return;
                }
            }
        })
        .await;
        if answer.is_ok() {
            break;
        }
    }
    registered.fetch_add(1, Ordering::Relaxed);
    let mut observed = 0;
    let mut reads = 0;
    loop {
        let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
        let Ok(request) = Packet::from_bytes(&buf[..len]) else {
            continue;
        };
        let MessageClass::Request(method) = request.header.code else {
            continue;
        };
        let mut answer = Packet::new();
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = request.header.message_id;
        answer.set_token(request.get_token().to_vec());
        let code = match method {
            RequestType::Get => {
                if request.get_first_option(CoapOption::Observe).is_some() {
                    answer.add_option(CoapOption::Observe, vec![1]);
                    observed += 1;
                } else if request.get_option(CoapOption::UriPath).is_some_and(|path| {
                    path.front().is_some_and(|object| object.as_slice() == b"3")
                }) && reads < 3
                {
                    // The Device object's three resources, read once after registering (a
                    // retransmitted read counts once).
                    reads += 1;
                    read.fetch_add(1, Ordering::Relaxed);
                }
                answer.payload = b"0".to_vec();
                ResponseType::Content
            }
            RequestType::Put => {
                if observed >= 2 {
                    told.fetch_add(1, Ordering::Relaxed);
                }
                ResponseType::Changed
            }
            _ => ResponseType::Changed,
        };
        answer.header.code = MessageClass::Response(code);
        let _ = socket.send_to(&answer.to_bytes().unwrap(), peer).await;
    }
}

pub(super) async fn lwm2m(addr: String, api: String, admin: String, n: usize, artifact: String) {
    let server: std::net::SocketAddr = addr.parse().unwrap();
    let http = reqwest::Client::new();
    create_devices(&http, &api, &admin, n, "lw").await;
    let registered = Arc::new(AtomicUsize::new(0));
    let read = Arc::new(AtomicUsize::new(0));
    let told = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    for i in 0..n {
        tokio::spawn(lwm2m_client(
            server,
            format!("lw-{i}"),
            registered.clone(),
            read.clone(),
            told.clone(),
        ));
    }
    while registered.load(Ordering::Relaxed) < n {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "registered {n} in {secs:.2} s = {:.0} registrations/s",
        n as f64 / secs
    );
    // The server reads each new registration's Device object (manufacturer, model, firmware
    // version: three reads); the update is measured from a fleet whose reads are done.
    while read.load(Ordering::Relaxed) < 3 * n {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "device objects read {n} in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    assign_tenant_wide(&http, &api, &admin, &artifact).await;
    while told.load(Ordering::Relaxed) < n {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "observed and told {n} in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    println!("held {n}");
    let mut line = String::new();
    let _ = tokio::io::stdin().read_to_string(&mut line).await;
}
