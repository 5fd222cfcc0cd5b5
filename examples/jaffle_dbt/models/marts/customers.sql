with order_stats as (
    select
        customer_id,
        count(*) as order_count,
        round(sum(amount), 2) as total_amount,
        min(order_date) as first_order_date,
        max(order_date) as last_order_date
    from {{ ref('orders') }}
    group by customer_id
)

select
    c.customer_id,
    c.first_name,
    c.last_name,
    c.signup_date,
    s.first_order_date,
    s.last_order_date,
    coalesce(s.order_count, 0) as order_count,
    coalesce(s.total_amount, 0) as total_amount
from {{ ref('stg_customers') }} as c
left join order_stats as s
    on c.customer_id = s.customer_id
