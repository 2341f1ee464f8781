/*
 * fwd: the floor of a UDP forwarder on this machine.
 *
 * One forwarder thread (pinned to core 0) receives datagrams with recvmmsg
 * and sends each one on with sendmmsg: nothing else, no parsing. A generator
 * thread paces datagrams of SIZE bytes at RATE per second into it and a sink
 * thread drains what it forwards (both on core 1). The forwarder's own CPU
 * (getrusage RUSAGE_THREAD, user and system) divided by the datagrams it
 * forwarded is the price of one datagram received and sent, at that rate:
 * what a proxy cannot go below, whatever it does with the bytes.
 *
 *   cc -O2 -pthread -o fwd perf/fwd.c
 *   fwd RATE SECONDS [SIZE]      # RATE 0: as fast as the generator can
 *
 * Prints one JSON object. Loopback only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXSZ 2048

static atomic_int stop;
static atomic_int measuring;
static int fwd_sock, gen_sock, sink_sock;
static struct sockaddr_in fwd_addr, sink_addr;
static double rate;
static int size = 800;
static unsigned long long forwarded, sunk, sent;
static double cpu_user, cpu_sys;

static void pin(int core)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(core % (int)sysconf(_SC_NPROCESSORS_ONLN), &set);
	pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static int udp(struct sockaddr_in *addr)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	int buf = 4 << 20;
	struct timeval tv = {0, 50000};
	socklen_t len = sizeof *addr;
	if (s < 0) {
		perror("socket");
		exit(2);
	}
	setsockopt(s, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	setsockopt(s, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	memset(addr, 0, sizeof *addr);
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)addr, sizeof *addr) < 0) {
		perror("bind");
		exit(2);
	}
	getsockname(s, (struct sockaddr *)addr, &len);
	return s;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void *forwarder(void *arg)
{
	static char bufs[BATCH][MAXSZ];
	struct mmsghdr in[BATCH], out[BATCH];
	struct iovec iov[BATCH];
	struct rusage r0, r1;
	int started = 0;
	(void)arg;
	pin(0);
	memset(in, 0, sizeof in);
	memset(out, 0, sizeof out);
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = MAXSZ;
		in[i].msg_hdr.msg_iov = &iov[i];
		in[i].msg_hdr.msg_iovlen = 1;
		out[i].msg_hdr.msg_name = &sink_addr;
		out[i].msg_hdr.msg_namelen = sizeof sink_addr;
	}
	while (!atomic_load(&stop)) {
		if (!started && atomic_load(&measuring)) {
			getrusage(RUSAGE_THREAD, &r0);
			forwarded = 0;
			started = 1;
		}
		int n = recvmmsg(fwd_sock, in, BATCH, MSG_WAITFORONE, NULL);
		if (n <= 0)
			continue;
		struct iovec oiov[BATCH];
		for (int i = 0; i < n; i++) {
			oiov[i].iov_base = bufs[i];
			oiov[i].iov_len = in[i].msg_len;
			out[i].msg_hdr.msg_iov = &oiov[i];
			out[i].msg_hdr.msg_iovlen = 1;
		}
		int done = 0;
		while (done < n) {
			int m = sendmmsg(fwd_sock, out + done, n - done, 0);
			if (m <= 0)
				break;
			done += m;
		}
		if (started)
			forwarded += n;
	}
	getrusage(RUSAGE_THREAD, &r1);
	cpu_user = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6;
	cpu_sys = (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
	return NULL;
}

static void *sink(void *arg)
{
	static char bufs[BATCH][MAXSZ];
	struct mmsghdr in[BATCH];
	struct iovec iov[BATCH];
	(void)arg;
	pin(1);
	memset(in, 0, sizeof in);
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = MAXSZ;
		in[i].msg_hdr.msg_iov = &iov[i];
		in[i].msg_hdr.msg_iovlen = 1;
	}
	while (!atomic_load(&stop)) {
		int n = recvmmsg(sink_sock, in, BATCH, MSG_WAITFORONE, NULL);
		if (n > 0)
			sunk += n;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	static char payload[MAXSZ];
	struct mmsghdr out[BATCH];
	struct iovec iov = {payload, 0};
	pthread_t tf, ts;
	double secs, t0, t_end, warm = 0.3, credit = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: fwd RATE SECONDS [SIZE]\n");
		return 2;
	}
	rate = atof(argv[1]);
	secs = atof(argv[2]);
	if (argc > 3)
		size = atoi(argv[3]);
	if (size < 1 || size > MAXSZ)
		size = 800;
	memset(payload, 'x', sizeof payload);
	iov.iov_len = size;

	fwd_sock = udp(&fwd_addr);
	sink_sock = udp(&sink_addr);
	struct sockaddr_in gen_addr;
	gen_sock = udp(&gen_addr);
	memset(out, 0, sizeof out);
	for (int i = 0; i < BATCH; i++) {
		out[i].msg_hdr.msg_name = &fwd_addr;
		out[i].msg_hdr.msg_namelen = sizeof fwd_addr;
		out[i].msg_hdr.msg_iov = &iov;
		out[i].msg_hdr.msg_iovlen = 1;
	}
	pthread_create(&tf, NULL, forwarder, NULL);
	pthread_create(&ts, NULL, sink, NULL);
	pin(1);

	t0 = now();
	t_end = t0 + warm + secs;
	double last = t0, t_measure = 0;
	unsigned long long sent_measured = 0;
	while (1) {
		double t = now();
		if (t >= t_end)
			break;
		if (!t_measure && t >= t0 + warm) {
			atomic_store(&measuring, 1);
			t_measure = t;
			sent_measured = sent;
		}
		int n;
		if (rate > 0) {
			credit += (t - last) * rate;
			last = t;
			n = credit >= BATCH ? BATCH : (int)credit;
			if (n == 0) {
				struct timespec ts1 = {0, 200000}; /* 0.2 ms pacing tick */
				nanosleep(&ts1, NULL);
				continue;
			}
			credit -= n;
		} else {
			n = 8;
			/* keep the forwarder busy without flooding its buffer */
			if (sent - sunk > 2000) {
				sched_yield();
				continue;
			}
		}
		int m = sendmmsg(gen_sock, out, n, 0);
		if (m > 0)
			sent += m;
	}
	double elapsed = now() - t_measure;
	usleep(100000);
	atomic_store(&stop, 1);
	pthread_join(tf, NULL);
	pthread_join(ts, NULL);
	printf("{\"rate\": %.0f, \"seconds\": %.3f, \"size\": %d, \"sent\": %llu, \"forwarded\": %llu, "
	       "\"forwarded_per_s\": %.0f, \"user_s\": %.4f, \"sys_s\": %.4f, \"cpu_us_per_datagram\": %.4f}\n",
	       rate, elapsed, size, sent - sent_measured, forwarded, forwarded / elapsed, cpu_user, cpu_sys,
	       forwarded ? (cpu_user + cpu_sys) * 1e6 / forwarded : 0.0);
	return 0;
}
