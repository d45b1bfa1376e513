use super::*;
use crate::agents::tests::link;

#[tokio::test(start_paused = true)]
async fn a_link_no_longer_wanted_retires_and_goes_once_no_flow_uses_it() {
    let link = link().await;
    let (wanted_tx, wanted_rx) = watch::channel(3);
    let flow = link.open_tcp("10.0.0.1", 80).await.expect("a flow");
    let going = tokio::spawn({
        let link = link.clone();
        async move { unused(&link, 2, wanted_rx).await }
    });
    tokio::time::sleep(UNUSED_CHECK * 5).await;
    assert!(!link.is_retiring() && !going.is_finished(), "wanted");

    wanted_tx.send(2).expect("the link's supervisor listens");
    tokio::time::sleep(UNUSED_CHECK * 5).await;
    assert!(link.is_retiring(), "retired: its striped flows leave it");
    assert!(!going.is_finished(), "a flow still uses it");

    wanted_tx.send(3).expect("the link's supervisor listens");
    tokio::time::sleep(UNUSED_CHECK * 5).await;
    assert!(
        !link.is_retiring(),
        "wanted again before its flows left: back in service"
    );
    drop(flow);
    tokio::time::sleep(UNUSED_CHECK * 5).await;
    assert!(!going.is_finished(), "kept while wanted");

    wanted_tx.send(1).expect("the link's supervisor listens");
    tokio::time::sleep(UNUSED_CHECK * 2).await;
    assert!(going.is_finished(), "gone once neither wanted nor used");
}
