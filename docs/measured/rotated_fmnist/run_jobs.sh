#!/bin/bash
# Run the lines of ${JOBS:-/tmp/t/jobs.txt}, one thread each; several runners share the list (mkdir claims).
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p ${CLAIMS:-/tmp/t/claims}
n=0
while IFS= read -r line; do
  n=$((n+1))
  mkdir ${CLAIMS:-/tmp/t/claims}/$n 2>/dev/null || continue
  echo "job $n start $(date -u +%T) runner $1 HEAD $(git log --oneline -1 | cut -c1-60)"
  eval "$line" > /dev/null 2>&1
  echo "job $n end $(date -u +%T) rc $?"
done < ${JOBS:-/tmp/t/jobs.txt}
echo "runner $1 finished $(date -u +%T)"
