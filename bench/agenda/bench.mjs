// Agenda's side of bench/compare.py: a worker with a no-op job, and the enqueuers.
//
//   node bench.mjs worker URL PROCESS_EVERY_MS [LOCK_LIMIT]   prints "ready", runs until SIGTERM
//   node bench.mjs enqueue URL N BATCH LIMIT_S     prints {"jobs": enqueued, "seconds": ...}
//   node bench.mjs latency URL SAMPLES             prints {"ms": [...]}
//
// URL is mongodb://host:port/db; jobs go to Agenda's default collection
// (agendaJobs). Every option not named here is Agenda's default.
import { Agenda } from 'agenda';
import { MongoBackend } from '@agendajs/mongo-backend';
import { MongoClient, ObjectId } from 'mongodb';

const [mode, url, arg1, arg2 = '0', arg3 = 'Infinity'] = process.argv.slice(2);

function open(options = {}) {
  return new Agenda({ backend: new MongoBackend({ address: url }), ...options });
}

async function worker(processEvery, lockLimit) {
  const agenda = open(lockLimit ? { processEvery, lockLimit } : { processEvery });
  agenda.define('noop', async () => {});
  agenda.on('error', (error) => console.error('agenda error', error));
  await agenda.start();
  const stop = async () => {
    await agenda.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  console.log('ready');
}

// N jobs with agenda.now(), BATCH of them in flight at once (1: one at a time).
async function enqueue(count, batch, limitSeconds) {
  const agenda = open();
  await agenda.ready;
  const started = performance.now();
  let done = 0;
  while (done < count && (performance.now() - started) / 1000 < limitSeconds) {
    const size = Math.min(batch, count - done);
    await Promise.all(Array.from({ length: size }, () => agenda.now('noop', { enq: Date.now() })));
    done += size;
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(JSON.stringify({ jobs: done, batch, seconds }));
}

// One job at a time to an idle fleet: agenda.now() to the job's lastRunAt, in ms.
// Each job is awaited (its document polled every 10 ms) before the next.
async function latency(samples) {
  const agenda = open();
  await agenda.ready;
  const mongo = new MongoClient(url);
  const jobs = mongo.db().collection('agendaJobs');
  const ms = [];
  for (let n = 0; n < samples; n += 1) {
    const enqueued = Date.now();
    const job = await agenda.now('noop', { enq: enqueued });
    const deadline = Date.now() + 60000;
    for (;;) {
      const doc = await jobs.findOne({ _id: new ObjectId(String(job.attrs._id)) }, { projection: { lastRunAt: 1, lastFinishedAt: 1 } });
      if (doc && doc.lastFinishedAt) {
        ms.push(doc.lastRunAt.getTime() - enqueued);
        break;
      }
      if (Date.now() > deadline) throw new Error('a latency job did not finish within 60 s');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  console.log(JSON.stringify({ ms }));
  await mongo.close();
}

if (mode === 'worker') {
  await worker(Number(arg1), Number(arg2));
} else if (mode === 'enqueue') {
  await enqueue(Number(arg1), Number(arg2), Number(arg3));
  process.exit(0);
} else if (mode === 'latency') {
  await latency(Number(arg1));
  process.exit(0);
} else {
  console.error('usage: node bench.mjs worker URL MS | enqueue URL N BATCH [LIMIT_S] | latency URL SAMPLES');
  process.exit(2);
}
