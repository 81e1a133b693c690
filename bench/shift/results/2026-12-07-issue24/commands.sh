# Issue 24's runs, session 11 (2026-12-07), as they were started (from the repository root).
# 1. the first schedule (seed 0 of fashion-spurious and animals-corruption ran from it):
#   # Issue 24's 2-epoch runs, restarted from nothing 2026-12-07 13:25 (session 11): the offline
#   # backbone was rebuilt and differs from the one the partial journals used.
#   # One invocation per (task, seed), two one-thread lanes, seeds roughly in order.
#   cd /work/main
#   export PYTHONPATH=$PWD:$PWD/offline OMP_NUM_THREADS=1
#   M=flyp,drm-weight,drm-soft,drm-soft-default,ce
#   C="--methods $M --fine-alphas --threads 1 --descriptions bench/shift/descriptions/v2.json"
#   one() {  # task seed
#     z=--no-zeroshot; [ "$2" = 0 ] && z=
#     .venv/bin/python -m bench.shift --tasks $1 --seeds $2 $z $C --out runs/i24/short/$1-s$2
#   }
#   mkdir -p runs/i24/short
#   ( for u in fashion-spurious:0 digits-natural:0 animals-corruption:1 fashion-spurious:2 digits-natural:2 animals-corruption:3 fashion-spurious:4 digits-natural:4; do
#       one ${u%:*} ${u#*:}; done ) > runs/i24/lane1.log 2>&1 &
#   echo $! > runs/i24/lane1.pid
#   ( for u in animals-corruption:0 fashion-spurious:1 digits-natural:1 animals-corruption:2 fashion-spurious:3 digits-natural:3 animals-corruption:4; do
#       one ${u%:*} ${u#*:}; done ) > runs/i24/lane2.log 2>&1 &
#   echo $! > runs/i24/lane2.pid

# 2. the second schedule (digits-natural seed 0 on the 0.05 grid; seeds 1-4 on the 0.25 grid):
# Issue 24's 2-epoch runs, session 11, second schedule (13:13 UTC): seed 0 on the 0.05 grid
# (fashion and animals already running, digits next in lane 1), seeds 1-4 on the 0.25 grid
# from a queue both lanes take from, seed-major (f a d per seed), so a cut-off leaves whole seeds.
cd /work/main
export PYTHONPATH=$PWD:$PWD/offline OMP_NUM_THREADS=1
M=flyp,drm-weight,drm-soft,drm-soft-default,ce
C="--methods $M --threads 1 --descriptions bench/shift/descriptions/v2.json"
Q=runs/i24/queue
printf '%s\n' fashion-spurious:1 animals-corruption:1 digits-natural:1 fashion-spurious:2 animals-corruption:2 digits-natural:2 \
  fashion-spurious:3 animals-corruption:3 digits-natural:3 fashion-spurious:4 animals-corruption:4 digits-natural:4 > $Q
take() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
coarse() { while u=$(take) && [ -n "$u" ]; do
    t=${u%:*}; s=${u#*:}
    .venv/bin/python -m bench.shift --tasks $t --seeds $s --no-zeroshot $C --out runs/i24/short/$t-s$s
  done; }
( while kill -0 10745 2>/dev/null; do sleep 5; done
  .venv/bin/python -m bench.shift --tasks digits-natural --seeds 0 --fine-alphas $C --out runs/i24/short/digits-natural-s0
  coarse ) >> runs/i24/lane1.log 2>&1 &
echo $! > runs/i24/lane1.pid
( while kill -0 10748 2>/dev/null; do sleep 5; done
  coarse ) >> runs/i24/lane2.log 2>&1 &
echo $! > runs/i24/lane2.pid

# 3. the 10-epoch runs of fashion-spurious, after the 2-epoch queue:
# Issue 24, session 11: after the 2-epoch queue, the 10-epoch (--long) runs of fashion-spurious
# (where the 2026-11-30 gain and the distillation question were), 0.25 grid, seed-major,
# from a second queue both lanes take from once their first is done.
cd /work/main
export PYTHONPATH=$PWD:$PWD/offline OMP_NUM_THREADS=1
M=flyp,drm-weight,drm-soft,drm-soft-default,ce
Q=runs/i24/queue-long
: > $Q
for s in 0 1 2 3 4; do for m in flyp drm-soft drm-soft-default drm-weight ce; do echo $m:$s >> $Q; done; done
take() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
long() { while u=$(take) && [ -n "$u" ]; do
    m=${u%:*}; s=${u#*:}; z=--no-zeroshot; [ "$m:$s" = flyp:0 ] && z=
    .venv/bin/python -m bench.shift --long --tasks fashion-spurious --methods $m --seeds $s $z \
      --threads 1 --descriptions bench/shift/descriptions/v2.json --out runs/i24/long/fashion-spurious-$m-s$s
  done; }
mkdir -p runs/i24/long
for lane in 1 2; do
  pid=$(cat runs/i24/lane$lane.pid)
  ( while kill -0 $pid 2>/dev/null; do sleep 10; done; long ) >> runs/i24/lane$lane.log 2>&1 &
done

# 4. the tables and the study:
# Issue 24: the tables and the rule study from session 11's runs (see README.md beside them).
set -euo pipefail
cd /work/main
export PYTHONPATH=$PWD:$PWD/offline
R=bench/shift/results/2026-12-07-issue24
mkdir -p $R/runs-short $R/runs-long
for d in runs/i24/short/*/ runs/i24/long/*/; do
  n=$(basename $d); kind=$(basename $(dirname $d))
  [ -f $d/results.json.gz ] && cp $d/results.json.gz $R/runs-$kind/$n.results.json.gz
done
SHORT=$(ls $R/runs-short/*.results.json.gz)
FINE=$(ls $R/runs-short/*-s0.results.json.gz)
.venv/bin/python -m bench.shift --report $SHORT --out $R/short > /dev/null
.venv/bin/python -m bench.shift.rules $SHORT --out $R/rules > /dev/null
.venv/bin/python -m bench.shift.rules $SHORT --baseline drm-soft --out $R/rules-vs-drm-soft > /dev/null
.venv/bin/python -m bench.shift.rules $FINE --out $R/rules-fine-grid-seed0 > /dev/null
if ls $R/runs-long/*.results.json.gz > /dev/null 2>&1; then
  LONG=$(ls $R/runs-long/*.results.json.gz)
  .venv/bin/python -m bench.shift --long --report $LONG --out $R/long > /dev/null
  .venv/bin/python -m bench.shift.rules $LONG --out $R/rules-long > /dev/null
  .venv/bin/python -m bench.shift.rules $LONG --baseline drm-soft --out $R/rules-long-vs-drm-soft > /dev/null
fi
du -sh $R
