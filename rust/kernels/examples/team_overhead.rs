//! Round-trip cost of one fork-join on the team (tasks that do nothing).
use std::time::Instant;
fn main() {
    let team = hwreg_kernels::exec::team::team(2);
    for spin_work in [0u64, 2000, 20000] {
        let t0 = Instant::now();
        let reps = 20000;
        for _ in 0..reps {
            team.for_each(4, &|i| {
                let mut x = i as u64;
                for _ in 0..spin_work {
                    x = std::hint::black_box(x.wrapping_mul(3));
                }
            });
        }
        let per = t0.elapsed().as_secs_f64() / reps as f64 * 1e6;
        let t1 = Instant::now();
        for _ in 0..reps {
            for i in 0..4u64 {
                let mut x = i;
                for _ in 0..spin_work {
                    x = std::hint::black_box(x.wrapping_mul(3));
                }
            }
        }
        let ser = t1.elapsed().as_secs_f64() / reps as f64 * 1e6;
        println!("4 tasks x {spin_work} iters: team {per:.2} us, serial {ser:.2} us");
    }
}
