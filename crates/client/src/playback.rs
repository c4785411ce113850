//! A virtual player, to count rebuffering: pure, driven by time and by how
//! many bytes are ready in order from the start.
//!
//! Playback starts once `buffer_bytes` are ready (or the whole object);
//! then the playhead advances at the committed bitrate. When it catches up
//! with the bytes ready, that is a rebuffering event: playback pauses until
//! a buffer's worth is ready again. This is how a player behaves whatever
//! it is fed from (stdout, a pipe, the local HTTP endpoint), so stream mode
//! counts rebuffers the same way in every case.

#[derive(Clone, Debug)]
pub struct Playback {
    bytes_per_ms: f64,
    buffer_bytes: u64,
    total_bytes: u64,
    state: State,
    position: f64,
    last_ms: u64,
    rebuffers: u32,
    stalled_ms: u64,
    started_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Filling the first buffer.
    Starting,
    Playing,
    /// Waiting for a buffer's worth again.
    Rebuffering,
    Finished,
}

impl Playback {
    /// `bitrate_bps` bits per second; `buffer_ms` of it before playing.
    pub fn new(bitrate_bps: f64, buffer_ms: u64, total_bytes: u64) -> Self {
        let bytes_per_ms = (bitrate_bps / 8_000.0).max(1e-9);
        Self {
            bytes_per_ms,
            buffer_bytes: (bytes_per_ms * buffer_ms as f64) as u64,
            total_bytes,
            state: State::Starting,
            position: 0.0,
            last_ms: 0,
            rebuffers: 0,
            stalled_ms: 0,
            started_ms: None,
        }
    }

    /// Time is now `now_ms` and the first `ready` bytes are available.
    pub fn update(&mut self, now_ms: u64, ready: u64) {
        let ready = ready.min(self.total_bytes);
        let dt = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        let enough = |position: f64| {
            let wanted = (position as u64 + self.buffer_bytes).min(self.total_bytes);
            ready >= wanted
        };
        match self.state {
            State::Starting => {
                if enough(0.0) {
                    self.state = State::Playing;
                    self.started_ms = Some(now_ms);
                }
            }
            State::Playing => {
                self.position += self.bytes_per_ms * dt as f64;
                if self.position >= self.total_bytes as f64 {
                    self.state = State::Finished;
                } else if self.position > ready as f64 {
                    self.position = ready as f64;
                    self.rebuffers += 1;
                    self.state = State::Rebuffering;
                }
            }
            State::Rebuffering => {
                self.stalled_ms += dt;
                if enough(self.position) {
                    self.state = State::Playing;
                }
            }
            State::Finished => {}
        }
    }

    /// Rebuffering events after the initial buffer.
    pub fn rebuffers(&self) -> u32 {
        self.rebuffers
    }

    /// Time spent rebuffering, ms.
    pub fn stalled_ms(&self) -> u64 {
        self.stalled_ms
    }

    /// When playback started (the initial buffer filled), ms.
    pub fn started_ms(&self) -> Option<u64> {
        self.started_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `arrival(t)` bytes ready at time t, every 100 ms.
    fn play(bitrate_bps: f64, total: u64, arrival: impl Fn(u64) -> u64) -> Playback {
        let mut p = Playback::new(bitrate_bps, 1_000, total);
        let mut t = 0;
        while p.state != State::Finished && t < 1_000_000 {
            p.update(t, arrival(t));
            t += 100;
        }
        p
    }

    #[test]
    fn a_download_faster_than_the_bitrate_never_rebuffers() {
        // 8 Mbit/s = 1,000 bytes/ms; arriving at 1,250 bytes/ms.
        let p = play(8e6, 10_000_000, |t| t * 1_250);
        assert_eq!(p.rebuffers(), 0);
        assert_eq!(p.started_ms(), Some(800), "a second of buffer at 1.25x");
    }

    #[test]
    fn a_download_that_stops_for_longer_than_the_buffer_rebuffers_once() {
        // Twice the bitrate for 3 s (6 MB: 5.5 s of playback from 0.5 s),
        // then nothing until 9 s, then fast again.
        let p = play(8e6, 20_000_000, |t| match t {
            0..=3_000 => t * 2_000,
            3_001..=9_000 => 6_000_000,
            _ => 6_000_000 + (t - 9_000) * 2_000,
        });
        assert_eq!(p.rebuffers(), 1);
        assert!(p.stalled_ms() > 0);
    }
}
