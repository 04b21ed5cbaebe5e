//! Claims: answering job announcements heard on gossip with this provider's load, and sending
//! the claim to the client that announced the job.

use super::*;

impl Provider {
    /// Handles a job announcement from gossip: returns whether it was well-formed, and claims
    /// the job in the background when a slot is free.
    pub(crate) fn on_announcement(
        self: &Arc<Self>,
        topic: &str,
        data: &[u8],
        author: Option<PeerId>,
    ) -> Result<(), quiver_proto::ProtoError> {
        quiver_proto::check_len(data, MAX_ANNOUNCEMENT_BYTES)?;
        let job: JobAnnouncement = prost::Message::decode(data)?;
        job.validate()?;
        if topic != quiver_proto::infer::infer_topic(&job.model) {
            return Err(quiver_proto::ProtoError::Invalid { field: "model", reason: "not the topic's model" });
        }
        let (Some(client), Some(engine)) = (author, self.engine_for(&job.model, &[]).cloned()) else {
            return Ok(());
        };
        if !self.announcements.allow(&client) {
            return Ok(());
        }
        #[cfg(feature = "adversary")]
        let greedy = self.adversary_mode() == Some(crate::adversary::Misbehaviour::ClaimNeverServe);
        #[cfg(not(feature = "adversary"))]
        let greedy = false;
        if job.deadline_ms < now_ms() || (self.free_slots() == 0 && !greedy) || !engine.ready() {
            return Ok(());
        }
        let addrs: Vec<Multiaddr> =
            job.client_addrs.iter().filter_map(|a| Multiaddr::try_from(a.clone()).ok()).collect();
        let this = self.clone();
        tokio::spawn(async move {
            #[allow(unused_mut)]
            let mut claim = Claim {
                job_id: job.job_id,
                model_sha256: engine.model().sha256.to_vec(),
                free_slots: this.free_slots(),
                queue_depth: this.queue_depth(),
                tokens_per_sec: this.tokens_per_sec(),
                batch_tokens_per_sec: this.batch_tokens_per_sec(),
            };
            #[cfg(feature = "adversary")]
            if this.adversary.is_some_and(|a| a.lies_in_heartbeats()) {
                claim.free_slots = claim.free_slots.max(8);
                claim.queue_depth = 0;
                claim.tokens_per_sec = crate::adversary::LIED_TOKENS_PER_SEC;
                claim.batch_tokens_per_sec = crate::adversary::LIED_TOKENS_PER_SEC;
            }
            match tokio::time::timeout(CLAIM_TIMEOUT, this.send_claim(client, addrs, claim)).await {
                Ok(Ok(chosen)) => debug!(%client, chosen, "claim answered"),
                Ok(Err(e)) => debug!(%client, error = %e, "claim not delivered"),
                Err(_) => debug!(%client, "claim timed out"),
            }
        });
        Ok(())
    }

    async fn send_claim(&self, client: PeerId, addrs: Vec<Multiaddr>, claim: Claim) -> Result<bool, String> {
        self.net.connect(client, addrs).await.map_err(|e| e.to_string())?;
        let mut control = self.net.streams();
        let mut stream =
            control.open_stream(client, StreamProtocol::new(CLAIM_PROTOCOL)).await.map_err(|e| e.to_string())?;
        write_frame(&mut stream, &claim).await.map_err(|e| e.to_string())?;
        let ack: ClaimAck = read_frame(&mut stream, MAX_CLAIM_BYTES).await.map_err(|e| e.to_string())?;
        let _ = stream.close().await;
        Ok(ack.chosen)
    }
}
